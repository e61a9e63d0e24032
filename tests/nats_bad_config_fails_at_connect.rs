//! Bad storage config fails clearly at connect: unreachable servers (an error, not a retry forever), a wrong
//! token, an existing stream with fewer replicas than configured, more replicas than servers,
//! `sync` durability against a server that does not fsync every write or without a way to tell,
//! and out-of-range values. Each case is paired with the connect that succeeds, so a check that
//! refused everything would fail too.

mod nats_common;

use nats_common::{Cluster, ClusterOptions};
use palimpsest::{Config, Durability, Error, NatsConfig, NatsLog};

fn single(cluster: &Cluster, prefix: &str) -> NatsConfig {
    NatsConfig { replicas: 1, ..nats_common::config(cluster, prefix, 1) }
}

fn field(e: &Error) -> &str {
    match e {
        Error::InvalidConfig { field, .. } => field,
        other => panic!("expected InvalidConfig, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_servers_fail_within_the_bound() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let cfg = NatsConfig {
        urls: vec![format!("nats://127.0.0.1:{port}")],
        connect_timeout_ms: 500,
        sync_always_acknowledged: true,
        ..NatsConfig::default()
    };
    let e = NatsLog::connect(&cfg, Durability::Sync).await.expect_err("nobody listens there");
    assert!(matches!(e, Error::Storage { .. } | Error::Timeout { .. }), "{e}");
    assert!(e.to_string().contains("connect") || e.to_string().contains("server"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_wrong_replicas_and_unsynced_servers_are_refused() {
    // A single server with a token and without `sync_interval: always`.
    let cluster = Cluster::start_with(
        1,
        ClusterOptions { sync_always: false, token: Some("right".to_string()), ..ClusterOptions::default() },
    )
    .await;

    let wrong = NatsConfig { token: Some("wrong".to_string()), ..single(&cluster, "auth") };
    let e = NatsLog::connect(&wrong, Durability::Buffered).await.expect_err("a wrong token");
    assert!(matches!(e, Error::Storage { .. }), "{e}");
    assert!(e.to_string().to_lowercase().contains("author"), "the error names authorization: {e}");
    let right = NatsConfig { token: Some("right".to_string()), ..single(&cluster, "auth") };
    NatsLog::connect(&right, Durability::Buffered).await.expect("the right token connects");

    // Sync durability against a server that does not fsync every write: refused, naming why.
    let e = NatsLog::connect(&right, Durability::Sync).await.expect_err("a server without sync_interval: always");
    assert_eq!(field(&e), "storage.nats.monitor_urls");
    assert!(e.to_string().contains("sync_interval: always"), "{e}");
    // Without monitoring endpoints, sync durability needs the operator's acknowledgement.
    let blind = NatsConfig { monitor_urls: Vec::new(), ..right.clone() };
    let e = NatsLog::connect(&blind, Durability::Sync).await.expect_err("no way to tell");
    assert_eq!(field(&e), "storage.nats.monitor_urls");
    let acknowledged = NatsConfig { sync_always_acknowledged: true, ..blind };
    NatsLog::connect(&acknowledged, Durability::Sync).await.expect("the operator vouched for it");

    // An existing stream with fewer replicas than configured.
    let e = NatsLog::connect(&NatsConfig { replicas: 2, ..right.clone() }, Durability::Buffered)
        .await
        .expect_err("R1 streams exist, R2 configured");
    assert_eq!(field(&e), "storage.nats.replicas");
    assert!(e.to_string().contains("fewer than the 2 configured"), "{e}");

    // More replicas than the cluster has servers: the stream cannot be made.
    let e = NatsLog::connect(
        &NatsConfig { replicas: 3, stream_prefix: "big".to_string(), ..right.clone() },
        Durability::Buffered,
    )
    .await
    .expect_err("R3 on one server");
    assert!(matches!(e, Error::Storage { .. }), "{e}");

    // A database made with more streams than configured.
    NatsLog::connect(
        &NatsConfig { streams: 2, stream_prefix: "two".to_string(), ..right.clone() },
        Durability::Buffered,
    )
    .await
    .expect("two streams");
    let e =
        NatsLog::connect(&NatsConfig { streams: 1, stream_prefix: "two".to_string(), ..right }, Durability::Buffered)
            .await
            .expect_err("one stream configured, two exist");
    assert_eq!(field(&e), "storage.nats.streams");
}

#[test]
fn out_of_range_values_name_their_field() {
    let cases = [
        (r#"{"storage":{"kind":"nats","nats":{"write_timeout_ms":1000}}}"#, "storage.nats.write_timeout_ms"),
        (r#"{"storage":{"kind":"nats","nats":{"urls":[]}}}"#, "storage.nats.urls (count)"),
        (r#"{"storage":{"kind":"nats","nats":{"stream_prefix":"a.b"}}}"#, "storage.nats.stream_prefix"),
        (r#"{"storage":{"kind":"nats","nats":{"replicas":0}}}"#, "storage.nats.replicas"),
        (r#"{"storage":{"kind":"nats","nats":{"streams":65}}}"#, "storage.nats.streams"),
        (r#"{"storage":{"kind":"nats","nats":{"token":"t","credentials_file":"c"}}}"#, "storage.nats.token"),
        (r#"{"storage":{"kind":"nats","nats":{"monitor_urls":["nats://x"]}}}"#, "storage.nats.monitor_urls"),
        (r#"{"storage":{"kind":"nats","nats":{"nope":1}}}"#, "storage.nats.nope"),
    ];
    for (json, want) in cases {
        let e = Config::from_json_str(json).expect_err(json);
        assert_eq!(field(&e), want, "{json}: {e}");
    }
    let ok = Config::from_json_str(r#"{"storage":{"kind":"nats","nats":{"urls":["nats://a:4222"],"replicas":3}}}"#)
        .expect("a valid nats config");
    assert_eq!(ok.storage.kind, palimpsest::StorageKind::Nats);
    // The fjall default does not look at the nats settings.
    assert_eq!(Config::default().storage.kind, palimpsest::StorageKind::Fjall);
}
