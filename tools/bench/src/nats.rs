//! The JetStream figures (issue 11): the engine on a local 3-node nats-server cluster this run
//! starts (`palimpsest-testcluster`, with `sync_interval: always`), beside raw async-nats doing
//! the same publishes to the same cluster.
//!
//! - Appends: `Session::append` of one workload message per call, from 64 sessions at once (one
//!   task each) and from one session, in `sync` durability (the default). Then raw async-nats
//!   publishes the very records the engine stored (read back from the stream, untimed: the same
//!   bytes), each with a `Nats-Msg-Id` of the engine's length and a
//!   `Nats-Expected-Last-Subject-Sequence`, one publish in flight per subject as the version check
//!   requires, to 64 (or 1) subjects of the same stream. Both sides hold one connection to the
//!   same node, so they reach the stream's leader by the same path. Each repeat times the engine
//!   and then raw; the ratio is the median of the per-repeat ratios. A first, untimed round of one
//!   append per session fills the engine's head cache and makes every raw subject exist: an agent
//!   loop already running.
//! - Reads: `working_memory(50)` of a 100-message session and of a 100,000-message one, with the
//!   window cache on (the default: a head read from the leader, then the cached window) and, for
//!   information, off (the head, the window's search and one batched read). Both sessions end with
//!   100 single appends, so their newest 50 messages lie in 50 records alike; the rest of the long
//!   one is written in batches of 1,000, which keeps the run short.
//!
//! Without a nats-server binary nothing here runs: every figure is null and `nats_skipped` says
//! why; a cluster that fails mid-run gives nulls and `nats_failed` with the error. Never a figure
//! that was not measured.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use palimpsest::{Components, Config, Engine, Message, NatsConfig, Session, StorageKind};
use palimpsest_testcluster::{Cluster, ClusterOptions};
use serde_json::{Map, Value, json};

use crate::Plan;
use crate::stats::{median, paired_ratio, round};
use crate::workload::{log, message};

/// Nodes of the cluster: the smallest that keeps a majority through the loss of one.
const NODES: usize = 3;
/// Stream prefix of the bench's database on its cluster.
const PREFIX: &str = "bench";
/// Sessions writing at once in the many-session figure.
const MANY_SESSIONS: usize = 64;
/// Messages in the short and the long session of the read figures.
const WM_SMALL: u64 = 100;
const WM_LARGE: u64 = 100_000;
/// Messages each session ends with, appended one per call (see the module docs).
const WM_TAIL: u64 = 100;
/// Messages per `append_many` while filling the long session (the default batch limit).
const FILL_BATCH: u64 = 1_000;
/// The window read.
const WINDOW: usize = 50;
/// Longest wait for one raw publish's acknowledgement, and for one record read back (the raw
/// client's request timeout).
const NATS_TIMEOUT: Duration = Duration::from_secs(20);
/// Most attempts of one raw publish. A clustered stream refuses a publish with an expected
/// subject sequence while an earlier one of that subject is still in process on its leader
/// (`wrong last sequence`, error code 10164, seen even after the earlier one's acknowledgement):
/// nothing is stored, and the client publishes again. The engine sees the same refusals.
const RAW_ATTEMPTS: u32 = 16;
/// Records read back at once (each a request to the stream's leader).
const READ_BACK_IN_FLIGHT: usize = 32;
/// Longest wait for the session stream to have a leader.
const LEADER_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the figures are missing when no binary is given.
pub const NO_SERVER: &str = "no nats-server given (--nats-server PATH, or PALIMPSEST_NATS_SERVER; \
                             scripts/setup-nats.sh installs one and prints its path)";

/// Every figure this module reports: null, all of them, when it did not run.
pub const FIELDS: &[&str] = &[
    "nats_append_per_s_64_sessions",
    "nats_raw_append_per_s_64_sessions",
    "nats_append_vs_raw_64_sessions",
    "nats_append_per_s_1_session",
    "nats_raw_append_per_s_1_session",
    "nats_append_vs_raw_1_session",
    "nats_record_bytes_mean",
    "nats_wm50_us_100",
    "nats_wm50_us_100k",
    "nats_wm50_growth",
    "nats_wm50_uncached_us_100",
    "nats_wm50_uncached_us_100k",
    "nats_wm50_uncached_growth",
    "nats_fill_100k_s",
    "nats_cluster",
];

type Outcome<T> = Result<T, String>;

/// The figures, or nulls and the reason: `server` is the nats-server binary, if one was given.
pub async fn figures(plan: &Plan, server: Option<&Path>) -> Value {
    let Some(server) = server else {
        log(format!("nats: skipped: {NO_SERVER}"));
        return unmeasured("nats_skipped", NO_SERVER);
    };
    match measure(plan, server).await {
        Ok(figures) => figures,
        Err(reason) => {
            log(format!("nats: failed: {reason}"));
            unmeasured("nats_failed", &reason)
        }
    }
}

/// Every field null, and `why` under `key` (`nats_skipped` or `nats_failed`).
fn unmeasured(key: &str, why: &str) -> Value {
    let mut out: Map<String, Value> = FIELDS.iter().map(|f| (f.to_string(), Value::Null)).collect();
    out.insert("nats_skipped".into(), Value::Null);
    out.insert("nats_failed".into(), Value::Null);
    out.insert(key.into(), json!(why));
    Value::Object(out)
}

fn engine_config(dir: &Path, nats: &NatsConfig, window_cache: bool) -> Config {
    let mut config = Config::new(dir.join("unused-on-nats"));
    config.storage.kind = StorageKind::Nats;
    config.storage.nats = nats.clone();
    // The engine refuses extraction on JetStream (SPEC 11a).
    config.extraction.enabled = false;
    if !window_cache {
        config.cache.window_bytes = 0;
    }
    config
}

/// A plain client on `url`, with the engine's connection settings (`NatsLog::connect`).
async fn raw_client(nats: &NatsConfig, url: &str) -> Outcome<async_nats::Client> {
    let addr: async_nats::ServerAddr = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let read_timeout = Duration::from_millis(nats.read_timeout_ms);
    async_nats::ConnectOptions::new()
        .name("palimpsest-bench raw")
        .connection_timeout(Duration::from_millis(nats.connect_timeout_ms))
        .request_timeout(Some(read_timeout))
        .ping_interval(read_timeout)
        .connect(addr)
        .await
        .map_err(|e| format!("a raw client on {url}: {e}"))
}

async fn measure(plan: &Plan, server: &Path) -> Outcome<Value> {
    log(format!("nats: starting a {NODES}-node cluster of {}", server.display()));
    let cluster = Cluster::launch(server, NODES, ClusterOptions::default())
        .await
        .map_err(|e| format!("the cluster did not start: {e}"))?;
    // One node for every connection (see the module docs).
    let node_url = cluster.urls().first().cloned().ok_or("a cluster without nodes")?;
    let nats = NatsConfig {
        urls: vec![node_url.clone()],
        stream_prefix: PREFIX.to_string(),
        streams: 1,
        replicas: NODES as u64,
        monitor_urls: cluster.monitor_urls(),
        ..NatsConfig::default()
    };
    let dir = tempfile::tempdir().map_err(|e| format!("a temp dir: {e}"))?;
    let engine = Engine::connect(engine_config(dir.path(), &nats, true), Components::default())
        .await
        .map_err(|e| format!("the engine's connect: {e}"))?;
    let client = raw_client(&nats, &node_url).await?;
    let mut js = jetstream::new(client.clone());
    js.set_timeout(NATS_TIMEOUT);
    // SPEC 11a: one session stream, `{prefix}_s0`.
    let stream_name = format!("{PREFIX}_s0");
    let leader = wait_leader(&js, &stream_name).await?;
    let mut stream = js.get_stream(&stream_name).await.map_err(|e| format!("stream {stream_name}: {e}"))?;
    let filter = stream.info().await.map_err(|e| format!("stream info: {e}"))?.config.subjects.first().cloned();
    let raw_prefix = filter
        .as_deref()
        .and_then(|f| f.strip_suffix('>'))
        .map(|p| format!("{p}raw."))
        .ok_or_else(|| format!("stream {stream_name} has no wildcard subject: {filter:?}"))?;

    let mut appends = Appends { js: js.clone(), stream, raw_prefix, bytes: 0, records: 0, refused: 0 };
    log(format!(
        "nats: appends from {MANY_SESSIONS} sessions and from 1, engine vs raw async-nats, {} repeats",
        plan.nats_repeats
    ));
    let many = appends.ratio(&engine, 1, MANY_SESSIONS, plan.nats_appends_per_session_many, plan.nats_repeats).await?;
    let one = appends.ratio(&engine, 2, 1, plan.nats_appends_one_session, plan.nats_repeats).await?;

    log(format!("nats: filling a {WM_SMALL}-message and a {WM_LARGE}-message session"));
    let small = session(&engine, "wm-small")?;
    let large = session(&engine, "wm-large")?;
    fill(&small, WM_SMALL).await?;
    let started = Instant::now();
    fill(&large, WM_LARGE).await?;
    let fill_s = started.elapsed().as_secs_f64();
    log(format!("nats: filled in {fill_s:.1} s; working_memory({WINDOW}), window cache on, then off"));
    let cached = read_growth(&small, &large, plan.nats_wm_calls, plan.nats_repeats).await?;
    let cold_engine = Engine::connect(engine_config(dir.path(), &nats, false), Components::default())
        .await
        .map_err(|e| format!("the second engine's connect: {e}"))?;
    let (cold_small, cold_large) = (session(&cold_engine, "wm-small")?, session(&cold_engine, "wm-large")?);
    let uncached = read_growth(&cold_small, &cold_large, plan.nats_wm_uncached_calls, plan.nats_repeats).await?;
    drop((small, large, cold_small, cold_large, engine, cold_engine));

    let version = client.server_info().version;
    let leader_name = cluster.name(leader).map_err(|e| e.to_string())?.to_string();
    Ok(json!({
        "nats_append_per_s_64_sessions": round(median(&many.engine), 0),
        "nats_raw_append_per_s_64_sessions": round(median(&many.raw), 0),
        "nats_append_vs_raw_64_sessions": round(paired_ratio(&many.engine, &many.raw), 3),
        "nats_append_per_s_1_session": round(median(&one.engine), 0),
        "nats_raw_append_per_s_1_session": round(median(&one.raw), 0),
        "nats_append_vs_raw_1_session": round(paired_ratio(&one.engine, &one.raw), 3),
        "nats_record_bytes_mean": round(appends.bytes as f64 / appends.records.max(1) as f64, 0),
        "nats_wm50_us_100": round(median(&cached.small), 1),
        "nats_wm50_us_100k": round(median(&cached.large), 1),
        "nats_wm50_growth": round(paired_ratio(&cached.large, &cached.small), 3),
        "nats_wm50_uncached_us_100": round(median(&uncached.small), 1),
        "nats_wm50_uncached_us_100k": round(median(&uncached.large), 1),
        "nats_wm50_uncached_growth": round(paired_ratio(&uncached.large, &uncached.small), 3),
        "nats_fill_100k_s": round(fill_s, 1),
        "nats_cluster": {
            "nodes": NODES,
            "server_version": version,
            "sync_interval_always": true,
            "client_node": "n0",
            "stream_leader": leader_name,
            "raw_publishes_refused_then_repeated": appends.refused,
            "repeats": plan.nats_repeats,
            "appends_per_repeat_64_sessions": MANY_SESSIONS as u64 * plan.nats_appends_per_session_many,
            "appends_per_repeat_1_session": plan.nats_appends_one_session,
            "wm50_calls_per_repeat": plan.nats_wm_calls,
            "wm50_uncached_calls_per_repeat": plan.nats_wm_uncached_calls,
        },
        "nats_skipped": null,
        "nats_failed": null,
    }))
}

/// Waits (bounded by [`LEADER_TIMEOUT`]) until `stream` has a leader, and returns its node index
/// (node `n{i}` is index `i`).
async fn wait_leader(js: &jetstream::Context, stream: &str) -> Outcome<usize> {
    let deadline = Instant::now() + LEADER_TIMEOUT;
    loop {
        if let Ok(mut s) = js.get_stream(stream).await
            && let Ok(info) = s.info().await
            && let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.as_deref())
        {
            return leader.strip_prefix('n').and_then(|i| i.parse().ok()).ok_or(format!("a leader named {leader}"));
        }
        if Instant::now() >= deadline {
            return Err(format!("stream {stream} had no leader within {} s", LEADER_TIMEOUT.as_secs()));
        }
        // Polling the cluster's election: nothing to wait on instead.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn session(engine: &Engine, id: &str) -> Outcome<Session> {
    engine.session(id).map_err(|e| format!("session {id}: {e}"))
}

/// Appends/s of each timed repeat, engine and raw.
struct Rates {
    engine: Vec<f64>,
    raw: Vec<f64>,
}

/// The append figures' state: the raw side's stream and the sizes of what it republished.
struct Appends {
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    /// Subjects of the raw publishes: `{stream's subject prefix}raw.{phase}.{slot}`.
    raw_prefix: String,
    bytes: u64,
    records: u64,
    /// Raw publishes the version check refused (each then published again).
    refused: u64,
}

impl Appends {
    async fn last_sequence(&mut self) -> Outcome<u64> {
        Ok(self.stream.info().await.map_err(|e| format!("stream info: {e}"))?.state.last_sequence)
    }

    /// `repeats` timed rounds, after an untimed one of a single append each, of `per_session`
    /// appends to each of `sessions` sessions of `engine`; each round's records are then
    /// republished raw. `phase` keeps the sessions, subjects and message ids of the figures apart.
    async fn ratio(
        &mut self,
        engine: &Engine,
        phase: u32,
        sessions: usize,
        per_session: u64,
        repeats: usize,
    ) -> Outcome<Rates> {
        let handles =
            (0..sessions).map(|s| session(engine, &format!("append-{phase}-{s:02}"))).collect::<Outcome<Vec<_>>>()?;
        let mut next = vec![0_u64; sessions];
        // Engine subject -> raw slot, so each session's records go to the same raw subject in
        // every round (the raw side's version chain goes on as the engine's does).
        let mut slots: HashMap<String, usize> = HashMap::new();
        let mut raw_last = vec![0_u64; sessions];
        let mut rates = Rates { engine: Vec::new(), raw: Vec::new() };
        for round in 0..=repeats {
            let n = if round == 0 { 1 } else { per_session };
            let total = sessions as u64 * n;
            let from = self.last_sequence().await? + 1;
            let engine_rate = engine_round(&handles, &mut next, n).await?;
            let stored = self.last_sequence().await? + 1 - from;
            if stored != total {
                return Err(format!("the engine stored {stored} records for {total} appends (one each expected)"));
            }
            let mut per_slot: Vec<Vec<Bytes>> = vec![Vec::new(); sessions];
            for (subject, payload) in read_back(&self.stream, from, total).await? {
                let fresh = slots.len();
                let slot = *slots.entry(subject).or_insert(fresh);
                if round > 0 {
                    self.bytes += payload.len() as u64;
                    self.records += 1;
                }
                per_slot.get_mut(slot).ok_or("the engine wrote to more subjects than it has sessions")?.push(payload);
            }
            let raw_rate = self.raw_round(phase, round, per_slot, &mut raw_last).await?;
            if round > 0 {
                log(format!(
                    "nats {sessions} session(s) repeat {round}: engine {engine_rate:.0} appends/s, raw {raw_rate:.0} publishes/s"
                ));
                rates.engine.push(engine_rate);
                rates.raw.push(raw_rate);
            }
        }
        Ok(rates)
    }

    /// Publishes each slot's payloads in order to its own subject, one in flight per subject, with
    /// the two headers the engine sends; returns publishes per second.
    async fn raw_round(
        &mut self,
        phase: u32,
        round: usize,
        per_slot: Vec<Vec<Bytes>>,
        last: &mut [u64],
    ) -> Outcome<f64> {
        let total: usize = per_slot.iter().map(Vec::len).sum();
        let started = Instant::now();
        let tasks: Vec<_> = per_slot
            .into_iter()
            .zip(last.iter())
            .enumerate()
            .map(|(slot, (payloads, &last))| {
                let js = self.js.clone();
                let subject = format!("{}{phase}.{slot}", self.raw_prefix);
                let stream = self.stream.clone();
                tokio::spawn(async move {
                    let (mut last, mut refused) = (last, 0_u64);
                    for (k, payload) in payloads.into_iter().enumerate() {
                        // 32 hex digits, as the engine's ids; unique in the stream.
                        let id = format!("{phase:04x}{round:04x}{slot:08x}{k:016x}");
                        let mut attempts = 0;
                        last = loop {
                            let mut headers = HeaderMap::new();
                            headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
                            headers.insert(
                                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                                last.to_string().as_str(),
                            );
                            let ack = js
                                .publish_with_headers(subject.clone(), headers, payload.clone())
                                .await
                                .map_err(|e| format!("a raw publish to {subject}: {e}"))?;
                            match ack.await {
                                Ok(ack) => break ack.sequence,
                                Err(e) if refused_by_version_check(&e) && attempts < RAW_ATTEMPTS => {
                                    // What a client of the version check does: read the subject's
                                    // last sequence and publish again on it, as the engine reads
                                    // the session's head and builds again (see RAW_ATTEMPTS).
                                    attempts += 1;
                                    refused += 1;
                                    last = stream
                                        .get_last_raw_message_by_subject(&subject)
                                        .await
                                        .map_err(|e| format!("the last record of {subject}: {e}"))?
                                        .sequence;
                                }
                                Err(e) => return Err(format!("a raw publish's acknowledgement ({subject}): {e}")),
                            }
                        };
                    }
                    Ok::<(u64, u64), String>((last, refused))
                })
            })
            .collect();
        for (task, slot) in tasks.into_iter().zip(last.iter_mut()) {
            let (sequence, refused) = task.await.map_err(|e| format!("a raw publisher task: {e}"))??;
            *slot = sequence;
            self.refused += refused;
        }
        Ok(total as f64 / started.elapsed().as_secs_f64())
    }
}

/// Whether the server refused `e` by the version check (stored nothing): "wrong last sequence",
/// with the subject's sequence (10071) or without (10164, an earlier publish still in process).
fn refused_by_version_check(e: &jetstream::context::PublishError) -> bool {
    e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence
        || std::error::Error::source(e)
            .and_then(|source| source.downcast_ref::<jetstream::Error>())
            .is_some_and(|e| e.error_code() == jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT)
}

/// `n` appends to each of `sessions` at once, one task per session, one message per call;
/// returns appends per second. The messages are made before the clock starts, as the raw side's
/// bytes are.
async fn engine_round(sessions: &[Session], next: &mut [u64], n: u64) -> Outcome<f64> {
    let batches: Vec<Vec<Message>> = next.iter().map(|&from| (from..from + n).map(message).collect()).collect();
    let started = Instant::now();
    let tasks: Vec<_> = sessions
        .iter()
        .zip(batches)
        .map(|(session, messages)| {
            let session = session.clone();
            tokio::spawn(async move {
                for m in messages {
                    session.append(m).await.map_err(|e| format!("an append to {}: {e}", session.id()))?;
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.map_err(|e| format!("an append task: {e}"))??;
    }
    let rate = (sessions.len() as u64 * n) as f64 / started.elapsed().as_secs_f64();
    for from in next {
        *from += n;
    }
    Ok(rate)
}

/// Subject and payload of the `n` records of `stream` from sequence `from` on, in order, each
/// read from the stream's leader (a follower may not hold the newest yet), [`READ_BACK_IN_FLIGHT`]
/// requests at a time, each bounded by the context's timeout. Reads by sequence rather than
/// through a consumer: an ordered consumer recreated before its first delivery starts again from
/// the stream's first record.
async fn read_back(stream: &jetstream::stream::Stream, from: u64, n: u64) -> Outcome<Vec<(String, Bytes)>> {
    futures_util::stream::iter(from..from + n)
        .map(|sequence| async move {
            let message =
                stream.get_raw_message(sequence).await.map_err(|e| format!("reading back record {sequence}: {e}"))?;
            if message.sequence != sequence {
                return Err(format!("asked for record {sequence}, got {}", message.sequence));
            }
            Ok((message.subject.to_string(), message.payload))
        })
        .buffered(READ_BACK_IN_FLIGHT)
        .try_collect()
        .await
}

/// Appends messages `0..n` to `session`: all but the last [`WM_TAIL`] in batches of
/// [`FILL_BATCH`], those one per call.
async fn fill(session: &Session, n: u64) -> Outcome<()> {
    let tail_from = n.saturating_sub(WM_TAIL);
    let mut idx = 0;
    while idx < tail_from {
        let end = (idx + FILL_BATCH).min(tail_from);
        session.append_many((idx..end).map(message).collect()).await.map_err(|e| format!("filling: {e}"))?;
        idx = end;
    }
    for idx in tail_from..n {
        session.append(message(idx)).await.map_err(|e| format!("filling: {e}"))?;
    }
    Ok(())
}

/// Mean microseconds per `working_memory(50)` of `session`, over `calls` calls.
async fn wm50_us(session: &Session, calls: usize) -> Outcome<f64> {
    let started = Instant::now();
    for _ in 0..calls {
        let memory = session.working_memory(WINDOW).await.map_err(|e| format!("working memory: {e}"))?;
        // The window rule may drop a tool result whose call fell off the front, never more.
        if memory.messages.len() + 1 < WINDOW {
            return Err(format!("working_memory({WINDOW}) gave {} messages", memory.messages.len()));
        }
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / calls.max(1) as f64)
}

/// Microseconds per read of each session, per repeat.
struct Reads {
    small: Vec<f64>,
    large: Vec<f64>,
}

/// `repeats` rounds of `calls` reads of the short session, then of the long one, after one read
/// of each (which fills the window cache when it is on).
async fn read_growth(small: &Session, large: &Session, calls: usize, repeats: usize) -> Outcome<Reads> {
    wm50_us(small, 1).await?;
    wm50_us(large, 1).await?;
    let mut reads = Reads { small: Vec::new(), large: Vec::new() };
    for _ in 0..repeats {
        reads.small.push(wm50_us(small, calls).await?);
        reads.large.push(wm50_us(large, calls).await?);
    }
    Ok(reads)
}

/// [`unmeasured`] with a reason under `key`, for the report's tests.
#[cfg(test)]
pub fn unmeasured_for_tests(key: &str) -> Map<String, Value> {
    match unmeasured(key, NO_SERVER) {
        Value::Object(map) => map,
        _ => unreachable!("unmeasured builds an object"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_server_every_figure_is_null_and_the_reason_is_given() {
        let out = unmeasured("nats_skipped", NO_SERVER);
        for field in FIELDS {
            assert_eq!(out[*field], Value::Null, "{field}");
        }
        assert_eq!(out["nats_skipped"], json!(NO_SERVER));
        assert_eq!(out["nats_failed"], Value::Null);
    }
}
