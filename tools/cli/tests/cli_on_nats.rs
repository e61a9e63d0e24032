//! The operator tool on the JetStream backend: `--config` with `storage.kind = "nats"` makes
//! `import`, `show`, `compact`, `export`, `audit`, `stats`, `gc`, `memories` and `delete` work on a real 3-node cluster (started here,
//! as the library's tests do), and what does not run there yet fails with exit 2 and says so; and
//! two `palimpsest serve` processes on one cluster serve the same sessions.
//! Needs `PALIMPSEST_NATS_SERVER` (scripts/test sets it).

mod common;
#[path = "../../../tests/nats_common/mod.rs"]
mod nats_common;

use common::{code, json, palimpsest, stderr, stdout};
use nats_common::{Cluster, wait_stream_leader};

/// The library config for the cluster, with its own stream prefix, as TOML.
fn engine_toml(cluster: &Cluster, prefix: &str) -> String {
    let quoted = |v: Vec<String>| v.iter().map(|u| format!("{u:?}")).collect::<Vec<_>>().join(", ");
    format!(
        "durability = \"sync\"\n\n[extraction]\nenabled = false\n\n[storage]\nkind = \"nats\"\n\n\
         [storage.nats]\nurls = [{}]\nmonitor_urls = [{}]\nstream_prefix = \"{prefix}\"\nstreams = 1\n",
        quoted(cluster.urls()),
        quoted(cluster.monitor_urls()),
    )
}

/// A config file for the cluster (the library config), with its own stream prefix.
fn config_file(dir: &std::path::Path, cluster: &Cluster, prefix: &str) -> String {
    let path = dir.join(format!("{prefix}.toml"));
    std::fs::write(&path, engine_toml(cluster, prefix)).expect("write the config");
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tool_runs_on_a_cluster() {
    let cluster = Cluster::start(3).await;
    let tmp = tempfile::tempdir().expect("temp dir");
    let config = config_file(tmp.path(), &cluster, "cli");
    let db = tmp.path().join("names-the-database").display().to_string();
    let transcript = tmp.path().join("t.jsonl");
    let mut lines = String::new();
    for i in 0..12 {
        lines.push_str(&format!("{{\"role\":\"user\",\"content\":\"turn {i} about the trip to Oslo\"}}\n"));
    }
    std::fs::write(&transcript, lines).expect("write the transcript");
    let base = ["--db", db.as_str(), "--config", config.as_str()];
    let with = |args: &[&str]| -> Vec<String> { base.iter().chain(args).map(|s| s.to_string()).collect() };
    let run = |args: Vec<String>| palimpsest(&args.iter().map(String::as_str).collect::<Vec<_>>());

    // The first command creates the streams (and an empty cluster audits clean); let them elect
    // their leaders before writing.
    let mut audit = vec!["audit".to_string()];
    audit.extend(with(&["--json"]));
    let first = run(audit.clone());
    assert_eq!(code(&first), 0, "an empty cluster audits clean: {}", stderr(&first));
    let js = async_nats::jetstream::new(cluster.raw_client().await);
    wait_stream_leader(&cluster, &js, "cli_s0").await;
    wait_stream_leader(&cluster, &js, "cli_meta").await;

    let mut import = vec!["import".to_string()];
    import.extend(with(&["--session", "trip", transcript.to_str().expect("utf-8 path")]));
    let out = run(import);
    assert_eq!(code(&out), 0, "import: {}", stderr(&out));

    let mut compact = vec!["compact".to_string()];
    compact.extend(with(&["--session", "trip", "--upto", "8", "--json"]));
    let out = run(compact);
    assert_eq!(code(&out), 0, "compact: {}", stderr(&out));

    let mut show = vec!["show".to_string()];
    show.extend(with(&["--session", "trip", "--json"]));
    let out = run(show);
    assert_eq!(code(&out), 0, "show: {}", stderr(&out));
    let shown = json(&out);
    assert_eq!(shown["summary"]["upto"], 8, "{shown}");
    assert_eq!(shown["messages"].as_array().map(Vec::len), Some(4), "{shown}");

    let out = run(audit.clone());
    assert_eq!(code(&out), 0, "audit: {}", stderr(&out));
    let report = json(&out);
    assert_eq!(
        (report["ok"].as_bool(), report["sessions"].as_u64(), report["splices"].as_u64()),
        (Some(true), Some(1), Some(1))
    );

    let mut stats = vec!["stats".to_string()];
    stats.extend(with(&["--json"]));
    let out = run(stats);
    assert_eq!(code(&out), 0, "stats: {}", stderr(&out));
    let counted = json(&out);
    assert_eq!(
        (
            counted["sessions"].as_u64(),
            counted["events"].as_u64(),
            counted["splices"].as_u64(),
            counted["blobs"].as_u64()
        ),
        (Some(1), Some(13), Some(1), Some(1)),
        "{counted}"
    );
    assert!(counted["keyspace_bytes"]["cli_s0"].as_u64().is_some_and(|b| b > 0), "{counted}");

    // The splice's blob is referenced: nothing to collect.
    let mut gc = vec!["gc".to_string()];
    gc.extend(with(&["--json"]));
    let out = run(gc.clone());
    assert_eq!(code(&out), 0, "gc: {}", stderr(&out));
    assert_eq!(json(&out)["orphan_blobs"], serde_json::json!([]), "{}", stdout(&out));

    // Memories are read from the meta stream (none here: this config does not extract).
    let mut memories = vec!["memories".to_string()];
    memories.extend(with(&["--json"]));
    let out = run(memories);
    assert_eq!(code(&out), 0, "memories: {}", stderr(&out));
    assert_eq!(json(&out)["memories"], serde_json::json!([]), "{}", stdout(&out));

    // Not on this backend yet: a clear refusal, exit 2, nothing written.
    let mut rebuild = vec!["rebuild".to_string()];
    rebuild.extend(with(&[]));
    let out = run(rebuild);
    assert_eq!(code(&out), 2, "rebuild: {}", stdout(&out));
    assert!(stderr(&out).contains("does not run on storage.kind = \"nats\""), "{}", stderr(&out));

    let exported = tmp.path().join("trip.jsonl");
    let mut export = vec!["export".to_string()];
    export.extend(with(&["--session", "trip", "--out", exported.to_str().expect("utf-8 path")]));
    let out = run(export);
    assert_eq!(code(&out), 0, "export: {}", stderr(&out));
    let lines = std::fs::read_to_string(&exported).expect("the export");
    assert_eq!(lines.lines().count(), 13, "12 messages and the splice: {lines}");

    let mut delete = vec!["delete".to_string()];
    delete.extend(with(&["--session", "trip", "--yes"]));
    let out = run(delete);
    assert_eq!(code(&out), 0, "delete: {}", stderr(&out));
    let out = run(audit);
    assert_eq!(code(&out), 0, "audit after the deletion: {}", stderr(&out));
    // The deleted session's blob is an orphan now, but younger than storage.nats.orphan_grace_ms
    // (an hour by default): an engine elsewhere could be about to splice it, so gc keeps it.
    assert_eq!(json(&out)["orphan_blobs"].as_array().map(Vec::len), Some(1), "{}", stdout(&out));
    let out = run(gc);
    assert_eq!(code(&out), 0, "gc: {}", stderr(&out));
    assert_eq!(json(&out)["orphan_blobs"], serde_json::json!([]), "{}", stdout(&out));
}

/// `palimpsest serve --config FILE`, its engine on the cluster; the URL it listens on.
async fn serve(config: &str, db: &str) -> (tokio::process::Child, String) {
    common::serve(&["--db", db, "--config", config, "--listen", "127.0.0.1:0"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_serve_one_cluster() {
    use serde_json::{Value, json};
    let cluster = Cluster::start(3).await;
    let tmp = tempfile::tempdir().expect("temp dir");
    let config = tmp.path().join("serve.toml");
    let engine = engine_toml(&cluster, "srv")
        .replace("[extraction]", "[engine.extraction]")
        .replace("[storage", "[engine.storage");
    std::fs::write(&config, format!("[engine]\n{engine}")).expect("write the config");
    let config = config.display().to_string();
    let (_a, url_a) = serve(&config, "srv-a").await;
    let js = async_nats::jetstream::new(cluster.raw_client().await);
    wait_stream_leader(&cluster, &js, "srv_s0").await;
    wait_stream_leader(&cluster, &js, "srv_meta").await;
    let (_b, url_b) = serve(&config, "srv-b").await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60)).build().expect("client");
    let message = |id: &str| json!({"role": "user", "content": format!("message {id}"), "id": id});

    let put = http
        .put(format!("{url_a}/v1/working-memory/trip"))
        .json(&json!({"messages": [message("m1"), message("m2")], "data": {"city": "Oslo"}}))
        .send()
        .await
        .expect("PUT");
    assert_eq!(put.status().as_u16(), 200, "{:?}", put.text().await);
    let append = http
        .post(format!("{url_b}/v1/working-memory/trip/messages"))
        .json(&json!({"messages": [message("m3")]}))
        .send()
        .await
        .expect("append through the other server");
    assert_eq!(append.status().as_u16(), 200, "{:?}", append.text().await);
    for url in [&url_a, &url_b] {
        let got: Value =
            http.get(format!("{url}/v1/working-memory/trip")).send().await.expect("GET").json().await.expect("json");
        let ids: Vec<&str> =
            got["messages"].as_array().expect("messages").iter().filter_map(|m| m["id"].as_str()).collect();
        assert_eq!(ids, ["m1", "m2", "m3"], "{url}: {got}");
        assert_eq!(got["data"]["city"], "Oslo", "{url}: {got}");
    }
    let deleted = http.delete(format!("{url_b}/v1/working-memory/trip")).send().await.expect("DELETE");
    assert!(deleted.status().is_success(), "{}", deleted.status());
    let gone = http.get(format!("{url_a}/v1/working-memory/trip")).send().await.expect("GET");
    assert_eq!(gone.status().as_u16(), 404);
}
