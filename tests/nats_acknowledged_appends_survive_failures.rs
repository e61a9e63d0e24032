//! Acknowledged appends survive node failures on a real 3-node cluster: 8 concurrent writers
//! while the stream leader is SIGKILLed and restarted, while it is frozen (SIGSTOP, then
//! SIGCONT), and across a whole-cluster kill and restart. Afterwards every node holds every
//! acknowledged record, once, at dense seqs: each node is made the stream's leader in turn and
//! read through leader-only reads.
//!
//! The scenarios share one machine, so they run one at a time (a lock), each with its own cluster.

mod nats_common;

use std::sync::Arc;
use std::time::Duration;

use nats_common::{Cluster, append_until_stored, config, connect, events_on_every_node, text_of, wait_stream_leader};
use palimpsest::{NatsConfig, NatsLog, Seq, SessionId};
use tokio::sync::watch;

/// The one session stream of the failure scenarios' backend (stream prefix `fail`).
const STREAM: &str = "fail_s0";

/// One scenario at a time: an async lock (a test holds it across its awaits), which a panicking
/// scenario releases like any other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const WRITERS: usize = 8;
const PER_WRITER: usize = 120;
/// Longest wait for the workload to reach a count of acknowledgements.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(90);

fn cfg(cluster: &Cluster) -> NatsConfig {
    NatsConfig { read_timeout_ms: 2_000, ..config(cluster, "fail", 3) }
}

fn text(writer: usize, i: usize) -> String {
    format!("w{writer}-{i}")
}

fn session(writer: usize) -> SessionId {
    SessionId::new(format!("writer.{writer}")).expect("valid id")
}

/// Starts the writers: writer `w` appends `text(w, 0..PER_WRITER)` to its own session, each until
/// acknowledged, and checks each lands at the next seq. The count of acknowledgements is watched.
fn start_writers(log: &Arc<NatsLog>) -> (Vec<tokio::task::JoinHandle<()>>, watch::Receiver<usize>) {
    let (tx, rx) = watch::channel(0_usize);
    let tx = Arc::new(tx);
    let handles = (0..WRITERS)
        .map(|w| {
            let (log, tx) = (Arc::clone(log), Arc::clone(&tx));
            tokio::spawn(async move {
                for i in 0..PER_WRITER {
                    let seq = append_until_stored(&log, &session(w), &text(w, i)).await;
                    assert_eq!(seq, Seq::new(i as u64 + 1), "writer {w}'s append {i} landed at the next seq");
                    tx.send_modify(|n| *n += 1);
                }
            })
        })
        .collect();
    (handles, rx)
}

async fn wait_for_acks(rx: &mut watch::Receiver<usize>, at_least: usize) {
    tokio::time::timeout(PROGRESS_TIMEOUT, rx.wait_for(|n| *n >= at_least))
        .await
        .unwrap_or_else(|_| panic!("fewer than {at_least} acknowledgements within {PROGRESS_TIMEOUT:?}"))
        .expect("the writers hold the sender");
}

async fn join(handles: Vec<tokio::task::JoinHandle<()>>) {
    for handle in handles {
        tokio::time::timeout(PROGRESS_TIMEOUT * 2, handle)
            .await
            .expect("a writer finishes")
            .expect("a writer succeeds");
    }
}

/// Every node, made leader in turn, holds every writer's texts exactly once at dense seqs.
async fn every_node_holds_every_acknowledged_append(cluster: &Cluster) {
    let sessions: Vec<SessionId> = (0..WRITERS).map(session).collect();
    let nodes = events_on_every_node(cluster, &cfg(cluster), STREAM, &sessions).await;
    for (node, held) in nodes.iter().enumerate() {
        for (w, events) in held.iter().enumerate() {
            let seqs: Vec<u64> = events.iter().map(|e| e.seq.get()).collect();
            assert_eq!(seqs, (1..=PER_WRITER as u64).collect::<Vec<_>>(), "node {node}, writer {w}: dense seqs");
            let texts: Vec<String> = events.iter().map(text_of).collect();
            let want: Vec<String> = (0..PER_WRITER).map(|i| text(w, i)).collect();
            assert_eq!(texts, want, "node {node}, writer {w}: every acknowledged append, once, in order");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_mid_workload_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3).await;
    let log = Arc::new(connect(&cfg(&cluster)).await);
    let js = async_nats::jetstream::new(cluster.raw_client().await);
    let (handles, mut acks) = start_writers(&log);
    // The victim is found first: a slow look-up after the threshold could let the writers finish
    // before the failure (seen once in about 10 runs on a loaded machine).
    let victim = wait_stream_leader(&cluster, &js, STREAM).await;
    wait_for_acks(&mut acks, WRITERS * PER_WRITER / 4).await;
    cluster.kill(victim);
    // Writes go on under a new leader before the old one comes back.
    let after_kill = *acks.borrow();
    wait_for_acks(&mut acks, after_kill + WRITERS * 10).await;
    cluster.restart(victim).await;
    join(handles).await;
    every_node_holds_every_acknowledged_append(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_leader_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(3).await;
    let log = Arc::new(connect(&cfg(&cluster)).await);
    let js = async_nats::jetstream::new(cluster.raw_client().await);
    let (handles, mut acks) = start_writers(&log);
    // The victim is found first: a slow look-up after the threshold could let the writers finish
    // before the failure (seen once in about 10 runs on a loaded machine).
    let victim = wait_stream_leader(&cluster, &js, STREAM).await;
    wait_for_acks(&mut acks, WRITERS * PER_WRITER / 4).await;
    cluster.signal(victim, "STOP");
    let after_stop = *acks.borrow();
    wait_for_acks(&mut acks, after_stop + WRITERS * 10).await;
    cluster.signal(victim, "CONT");
    join(handles).await;
    every_node_holds_every_acknowledged_append(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_restart_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3).await;
    {
        let log = Arc::new(connect(&cfg(&cluster)).await);
        let (handles, mut acks) = start_writers(&log);
        wait_for_acks(&mut acks, WRITERS * PER_WRITER / 2).await;
        // Every node at once, mid-workload.
        for i in 0..3 {
            cluster.kill(i);
        }
        for i in 0..3 {
            cluster.restart_without_waiting(i);
        }
        for i in 0..3 {
            cluster.wait_healthy(i).await;
        }
        join(handles).await;
    }
    every_node_holds_every_acknowledged_append(&cluster).await;
}
