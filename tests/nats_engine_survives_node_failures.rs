//! The engine's write path on JetStream (`Session::append`, `append_many`: the session lock, the
//! head cache, conflict rebuilds, the session fence after an ambiguous failure) survives node
//! failures on a real 3-node cluster: 8 concurrent writers on two engines (two connections, as two
//! processes would have) sharing 4 sessions, while the stream leader is SIGKILLed and restarted,
//! while it is frozen (SIGSTOP, then SIGCONT), and across a whole-cluster kill and restart.
//!
//! Where the writers write ([`placement`]): sessions 0 and 1 have one writer on each engine, so
//! their appends serialize through the version check and the losers rebuild; sessions 2 and 3
//! have both writers on one engine, so they serialize through that engine's session lock and head
//! cache. Every 4th call is an `append_many` of 3 messages. The writers run until the scenario
//! stops them (each makes at most [`MAX_CALLS`]): it waits for calls to finish before the failure
//! and during it (under a new leader), so the workload spans the failure however fast or slow the
//! machine is; the writers go on through the recovery (a restarted node catching up, a thawed
//! leader stepping down, the whole cluster coming back) until they are stopped.
//!
//! A writer whose call returns `Timeout` or `Storage` does not know whether its messages landed:
//! it reads the session (`history`) and calls again only if they are not there. What is asserted
//! afterwards ([`check`]), per session:
//! - both engines read the same history, its seqs dense `1..=n`, only messages and episode
//!   boundaries in it;
//! - every message's text was attempted by a writer of that session (nothing invented), and every
//!   attempted text is there (nothing lost, acknowledged or not: a writer stops only once it knows);
//! - an acknowledged call's messages sit at the seqs its acknowledgement named, in order;
//! - a call's messages are stored together (as many copies of each text of an `append_many`);
//! - a call that met no ambiguous outcome is stored exactly once; one that met `k` is stored at
//!   most `1 + k` times (in practice at most twice). A duplicate is possible here and not at the
//!   `NatsLog` level because of who retries: `nats_common::append_until_stored` retries an
//!   ambiguous append with the very same commit (same expected version, same bytes, so the same
//!   `Nats-Msg-Id`), which the server deduplicates or the version check refuses, so it can never
//!   land twice. `Session::append` gives up instead (its session is fenced: the cached head is
//!   dropped), and the caller's retry is a new call whose commit is built on a fresh head, with a
//!   new version and a new id. If the first commit lands after the caller's read saw nothing (a
//!   publish still queued at a frozen leader, or a read answered by a deposed leader), the second
//!   either lands first (the first is then refused by the version check) or is refused itself and
//!   rebuilt by the engine on the fresh head, which holds the first copy; the builder cannot know
//!   the new message is the same one, so it is appended again. Only the caller could tell, with an
//!   id of its own in the message;
//! - each writer's calls first appear in the order it made them;
//! - after the writers, each engine appends once more to every session, and each lands after
//!   everything else (the head caches and the version check agree again after the failure);
//! - `Engine::audit_async` is clean on both engines;
//! - every node, made the stream's leader in turn and read through leader-only reads, holds
//!   exactly the history the engines read.
//!
//! The scenarios share one machine, so they run one at a time (a lock), each with its own cluster.
//! Needs `PALIMPSEST_NATS_SERVER` (scripts/test sets it); fails loudly without it.

mod nats_common;

use std::collections::HashMap;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use nats_common::{Cluster, events_on_every_node, wait_stream_leader};
use palimpsest::{
    AuditOptions, Components, Config, Durability, Engine, Error, Event, EventKind, Message, NatsConfig, Seq, Session,
    SessionId, StorageKind,
};
use tokio::sync::watch;

/// The stream prefix of every scenario (each has its own cluster).
const PREFIX: &str = "eng";
/// The one session stream (`storage.nats.streams = 1`).
const STREAM: &str = "eng_s0";
/// The blob and marker stream.
const META: &str = "eng_meta";

/// One scenario at a time: an async lock (a test holds it across its awaits), which a panicking
/// scenario releases like any other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const ENGINES: usize = 2;
const SESSIONS: usize = 4;
const WRITERS: usize = 8;
/// Calls finished before a scenario's failure.
const CALLS_BEFORE: usize = 96;
/// Calls finished during the failure (under a new leader, or once a restarted cluster is back),
/// and after a frozen leader thaws.
const CALLS_AFTER: usize = 32;
/// Most calls one writer makes (it then ends on its own): a bound on the workload while a scenario
/// waits for a recovery, far above the calls the scenario waits for (`WRITERS * MAX_CALLS` >
/// `CALLS_BEFORE + 2 * CALLS_AFTER`), so those waits cannot run out of calls.
const MAX_CALLS: usize = 400;
/// Every `MANY_EVERY`-th call is an `append_many` of `MANY_LEN` messages.
const MANY_EVERY: usize = 4;
const MANY_LEN: usize = 3;
/// Most times one call is made before the writer gives up (and the test fails).
const MAX_TRIES: usize = 20;
/// Wait after a call that did not store its messages, before the next try.
const RETRY_WAIT: Duration = Duration::from_millis(100);
/// Longest wait for any one engine call: the engine bounds each itself (the lock wait, the write
/// timeout, the read timeout); this only turns a hang into a failure.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest time a writer keeps reading a session that does not answer (an election, a restart).
const READ_DEADLINE: Duration = Duration::from_secs(90);
/// Longest wait for the workload to reach a count of finished calls.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(90);
/// Most events read from one session (at most 2 writers * MAX_CALLS * 1.5 messages, plus
/// boundaries).
const MAX_EVENTS: usize = 10_000;

fn nats_config(cluster: &Cluster) -> NatsConfig {
    NatsConfig { read_timeout_ms: 2_000, ..nats_common::config(cluster, PREFIX, 3) }
}

fn engine_config(cluster: &Cluster) -> Config {
    let mut config = Config::new("unused-on-nats");
    config.durability = Durability::Sync;
    config.storage.kind = StorageKind::Nats;
    config.storage.nats = nats_config(cluster);
    config.extraction.enabled = false;
    config
}

/// Two engines on the cluster, each with its own connection.
async fn engines(cluster: &Cluster) -> Vec<Engine> {
    let first = Engine::connect(engine_config(cluster), Components::default()).await.expect("connect an engine");
    // New streams refuse publishes until their first leader is elected.
    let js = async_nats::jetstream::new(cluster.raw_client().await);
    wait_stream_leader(cluster, &js, STREAM).await;
    wait_stream_leader(cluster, &js, META).await;
    let mut all = vec![first];
    for _ in 1..ENGINES {
        all.push(Engine::connect(engine_config(cluster), Components::default()).await.expect("connect an engine"));
    }
    all
}

fn session_id(s: usize) -> SessionId {
    SessionId::new(format!("shared.{s}")).expect("valid id")
}

/// Where writer `w` writes: `(engine, session)`. Sessions 0 and 1 get one writer on each engine;
/// sessions 2 and 3 both writers on one engine.
fn placement(w: usize) -> (usize, usize) {
    match w {
        0..=3 => (w % 2, w / 2),
        4 | 5 => (0, 2),
        _ => (1, 3),
    }
}

/// The texts of writer `w`'s call `i`: one message, or `MANY_LEN` for an `append_many`.
fn texts(w: usize, i: usize) -> Vec<String> {
    if i % MANY_EVERY == MANY_EVERY - 1 {
        (0..MANY_LEN).map(|k| format!("w{w}-{i}.{k}")).collect()
    } else {
        vec![format!("w{w}-{i}")]
    }
}

/// One call as its writer saw it.
#[derive(Debug)]
struct Call {
    /// Which session it wrote to.
    session: usize,
    /// The writer and the call's index in its order (the checks after the workload's appends
    /// use writers `WRITERS..`).
    writer: usize,
    index: usize,
    texts: Vec<String>,
    /// The seqs its acknowledgement named, if one came (else the writer found it stored).
    acked: Option<Range<Seq>>,
    /// Ambiguous outcomes (`Timeout`, `Storage`) met before it was known stored.
    ambiguous: usize,
}

/// What the writers met, for the report (nothing asserts on it: a failover may or may not show
/// through the engine's own retries).
#[derive(Default)]
struct Tally {
    ambiguous: AtomicUsize,
    found_after_ambiguous: AtomicUsize,
    retried_after_ambiguous: AtomicUsize,
    conflicts: AtomicUsize,
    /// The first few ambiguous errors' texts.
    seen: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn report(&self, scenario: &str, calls: usize, events: usize, duplicates: usize) {
        eprintln!(
            "{scenario}: {calls} calls, {events} events; {} ambiguous outcomes ({} found stored, {} retried), {} conflicts returned, {duplicates} \
             duplicated calls",
            self.ambiguous.load(Ordering::Relaxed),
            self.found_after_ambiguous.load(Ordering::Relaxed),
            self.retried_after_ambiguous.load(Ordering::Relaxed),
            self.conflicts.load(Ordering::Relaxed),
        );
        for error in self.seen.lock().expect("no writer panicked holding it").iter() {
            eprintln!("{scenario}:   {error}");
        }
    }

    fn ambiguous(&self, error: &Error) {
        self.ambiguous.fetch_add(1, Ordering::Relaxed);
        let mut seen = self.seen.lock().expect("no writer panicked holding it");
        if seen.len() < 8 {
            seen.push(error.to_string());
        }
    }
}

/// `future`, or a failure naming `what` after [`CALL_TIMEOUT`].
async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(CALL_TIMEOUT, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {CALL_TIMEOUT:?}"))
}

/// The session's whole history, asking again (bounded by [`READ_DEADLINE`]) while the cluster does
/// not answer. Empty for a session without records.
async fn read_all(session: &Session) -> Vec<Event> {
    let deadline = tokio::time::Instant::now() + READ_DEADLINE;
    loop {
        match bounded("a history read", session.history(Seq::new(1), MAX_EVENTS)).await {
            Ok(events) => {
                assert!(events.len() < MAX_EVENTS, "{} is larger than a read", session.id());
                return events;
            }
            Err(Error::NotFound { .. }) => return Vec::new(),
            Err(e @ (Error::Timeout { .. } | Error::Storage { .. })) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{}: unreadable for {READ_DEADLINE:?}: {e}",
                    session.id()
                );
                // Polling a cluster that is electing or restarting; bounded by the deadline.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{}: history: {e}", session.id()),
        }
    }
}

/// The text of a message event, `None` for any other event.
fn message_text(event: &Event) -> Option<&str> {
    match &event.kind {
        EventKind::MessageAppended(m) => Some(&m.content),
        _ => None,
    }
}

/// How many times `texts` (one call's) are stored in the session: each text as often as the
/// others, since a call's messages are one record.
async fn copies(session: &Session, texts: &[String]) -> usize {
    let events = read_all(session).await;
    let counts: Vec<usize> =
        texts.iter().map(|t| events.iter().filter(|e| message_text(e) == Some(t.as_str())).count()).collect();
    assert!(
        counts.iter().all(|c| *c == counts[0]),
        "{}: the messages of one call stored apart: {counts:?}",
        session.id()
    );
    counts[0]
}

/// Makes one call until its messages are stored: acknowledged, or found in the session after an
/// ambiguous outcome. A `Conflict` (the engine lost every rebuild) stored nothing: call again.
async fn write_call(session: &Session, writer: usize, index: usize, tally: &Tally, s: usize) -> Call {
    let texts = if writer < WRITERS { texts(writer, index) } else { vec![format!("end-{writer}")] };
    let mut call = Call { session: s, writer, index, texts, acked: None, ambiguous: 0 };
    for _ in 0..MAX_TRIES {
        let messages: Vec<Message> = call.texts.iter().map(|t| Message::user(t.clone())).collect();
        let outcome = if messages.len() == 1 {
            let message = messages.into_iter().next().expect("one message");
            bounded("append", session.append(message)).await.map(|seq| seq..seq.next())
        } else {
            bounded("append_many", session.append_many(messages)).await
        };
        match outcome {
            Ok(range) => {
                call.acked = Some(range);
                return call;
            }
            Err(e @ (Error::Timeout { .. } | Error::Storage { .. })) => {
                call.ambiguous += 1;
                tally.ambiguous(&e);
                if copies(session, &call.texts).await > 0 {
                    tally.found_after_ambiguous.fetch_add(1, Ordering::Relaxed);
                    return call;
                }
                tally.retried_after_ambiguous.fetch_add(1, Ordering::Relaxed);
            }
            Err(Error::Conflict { .. }) => {
                tally.conflicts.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => panic!("writer {writer}, call {index}: {e}"),
        }
        // A retry policy, not synchronisation: the next try is correct whenever it runs.
        tokio::time::sleep(RETRY_WAIT).await;
    }
    panic!("writer {writer}, call {index}: not stored after {MAX_TRIES} tries");
}

/// The running writers: each makes calls until it is stopped or has made [`MAX_CALLS`]; the count
/// of finished calls is watched.
struct Writers {
    handles: Vec<tokio::task::JoinHandle<Vec<Call>>>,
    stop: Arc<AtomicBool>,
    done: watch::Receiver<usize>,
}

impl Writers {
    fn start(engines: &[Engine], tally: &Arc<Tally>) -> Writers {
        let (tx, done) = watch::channel(0_usize);
        let tx = Arc::new(tx);
        let stop = Arc::new(AtomicBool::new(false));
        let handles = (0..WRITERS)
            .map(|w| {
                let (e, s) = placement(w);
                let session = engines[e].session(session_id(s)).expect("valid id");
                let (tx, tally, stop) = (Arc::clone(&tx), Arc::clone(tally), Arc::clone(&stop));
                tokio::spawn(async move {
                    let mut calls = Vec::new();
                    for i in 0..MAX_CALLS {
                        if stop.load(Ordering::Acquire) {
                            break;
                        }
                        calls.push(write_call(&session, w, i, &tally, s).await);
                        tx.send_modify(|n| *n += 1);
                    }
                    calls
                })
            })
            .collect();
        Writers { handles, stop, done }
    }

    /// Waits (bounded) until `more` calls have finished after the ones finished so far.
    async fn wait_for_more(&mut self, more: usize) {
        let at_least = *self.done.borrow() + more;
        tokio::time::timeout(PROGRESS_TIMEOUT, self.done.wait_for(|n| *n >= at_least))
            .await
            .unwrap_or_else(|_| panic!("fewer than {at_least} calls finished within {PROGRESS_TIMEOUT:?}"))
            .unwrap_or_else(|_| panic!("the writers ended before {at_least} calls (a writer failed: see its panic)"));
    }

    /// Stops the writers after their current calls and returns every call made.
    async fn stop(self) -> Vec<Call> {
        self.stop.store(true, Ordering::Release);
        let mut calls = Vec::new();
        for handle in self.handles {
            let mine = tokio::time::timeout(PROGRESS_TIMEOUT, handle)
                .await
                .expect("a writer finishes")
                .expect("a writer succeeds");
            calls.extend(mine);
        }
        calls
    }
}

/// Everything the module docs promise, after the writers have finished.
async fn check(scenario: &str, cluster: &Cluster, engines: &[Engine], mut calls: Vec<Call>, tally: &Tally) {
    // Each engine appends once more to every session; the second lands after the first.
    for s in 0..SESSIONS {
        let mut last = Seq::ZERO;
        for (e, engine) in engines.iter().enumerate() {
            let session = engine.session(session_id(s)).expect("valid id");
            let call = write_call(&session, WRITERS + e, 0, tally, s).await;
            let range = call.acked.clone().expect("an append after the failure is acknowledged");
            assert!(range.start > last, "{scenario}, session {s}: engine {e}'s append lands after the one before it");
            last = range.start;
            calls.push(call);
        }
    }

    let mut histories = Vec::new();
    for s in 0..SESSIONS {
        let ours = read_all(&engines[0].session(session_id(s)).expect("valid id")).await;
        for (e, engine) in engines.iter().enumerate().skip(1) {
            let theirs = read_all(&engine.session(session_id(s)).expect("valid id")).await;
            assert_eq!(theirs, ours, "{scenario}, session {s}: engine {e} reads what engine 0 reads");
        }
        let seqs: Vec<u64> = ours.iter().map(|e| e.seq.get()).collect();
        assert_eq!(seqs, (1..=ours.len() as u64).collect::<Vec<_>>(), "{scenario}, session {s}: dense seqs");
        for event in &ours {
            assert!(
                matches!(event.kind, EventKind::MessageAppended(_) | EventKind::EpisodeBoundary { .. }),
                "{scenario}, session {s}: only messages and boundaries were written: {event:?}"
            );
        }
        histories.push(ours);
    }

    // Where each text is stored, and which call made it.
    let mut stored: Vec<HashMap<&str, Vec<Seq>>> = vec![HashMap::new(); SESSIONS];
    for (s, events) in histories.iter().enumerate() {
        for event in events {
            if let Some(text) = message_text(event) {
                stored[s].entry(text).or_default().push(event.seq);
            }
        }
    }
    let mut attempted: Vec<HashMap<&str, usize>> = vec![HashMap::new(); SESSIONS];
    let mut duplicates = 0;
    for (c, call) in calls.iter().enumerate() {
        let s = call.session;
        let counts: Vec<usize> = call.texts.iter().map(|t| stored[s].get(t.as_str()).map_or(0, Vec::len)).collect();
        let n = counts[0];
        let who = format!("{scenario}, session {s}, writer {}, call {} {:?}", call.writer, call.index, call.texts);
        assert!(counts.iter().all(|k| *k == n), "{who}: its messages are stored together: {counts:?}");
        assert!(n >= 1, "{who}: stored (acknowledged: {:?})", call.acked);
        if call.ambiguous == 0 {
            assert_eq!(n, 1, "{who}: stored once, having met no ambiguous outcome");
        } else {
            assert!(n <= 1 + call.ambiguous, "{who}: stored {n} times after {} ambiguous outcomes", call.ambiguous);
        }
        duplicates += usize::from(n > 1);
        if let Some(range) = &call.acked {
            let at: Vec<&str> =
                histories[s].iter().filter(|e| range.contains(&e.seq)).filter_map(message_text).collect();
            assert_eq!(at, call.texts, "{who}: at the seqs its acknowledgement named, {range:?}");
        }
        for text in &call.texts {
            attempted[s].insert(text, c);
        }
    }
    for (s, texts) in stored.iter().enumerate() {
        for text in texts.keys() {
            assert!(attempted[s].contains_key(text), "{scenario}, session {s}: {text:?} was never attempted there");
        }
    }
    // Each writer's calls first appear in the order it made them: a call starts only once the one
    // before it is known stored.
    for w in 0..WRITERS {
        let firsts: Vec<Seq> =
            calls.iter().filter(|c| c.writer == w).map(|c| stored[c.session][c.texts[0].as_str()][0]).collect();
        assert!(
            firsts.windows(2).all(|p| p[0] < p[1]),
            "{scenario}, writer {w}: first copies in call order: {firsts:?}"
        );
    }

    for (e, engine) in engines.iter().enumerate() {
        let report = bounded("audit", engine.audit_async(AuditOptions::default(), |_| {})).await.expect("audit");
        assert!(report.ok, "{scenario}: engine {e}'s audit: {:?}", report.violations);
        assert_eq!(report.sessions, SESSIONS as u64, "{scenario}: engine {e}'s audit saw every session");
    }

    let ids: Vec<SessionId> = (0..SESSIONS).map(session_id).collect();
    let nodes = events_on_every_node(cluster, &nats_config(cluster), STREAM, &ids).await;
    for (node, held) in nodes.iter().enumerate() {
        for (s, events) in held.iter().enumerate() {
            assert_eq!(events, &histories[s], "{scenario}, node {node}, session {s}: the history the engines read");
        }
    }
    tally.report(scenario, calls.len(), histories.iter().map(Vec::len).sum(), duplicates);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_appends_survive_a_killed_leader() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3).await;
    let engines = engines(&cluster).await;
    let js = async_nats::jetstream::new(cluster.raw_client().await);
    let tally = Arc::new(Tally::default());
    let mut writers = Writers::start(&engines, &tally);
    writers.wait_for_more(CALLS_BEFORE).await;
    let victim = wait_stream_leader(&cluster, &js, STREAM).await;
    cluster.kill(victim);
    // Writes go on under a new leader, and while the old one comes back and catches up.
    writers.wait_for_more(CALLS_AFTER).await;
    cluster.restart(victim).await;
    let calls = writers.stop().await;
    check("killed leader", &cluster, &engines, calls, &tally).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_appends_survive_a_frozen_leader() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(3).await;
    let engines = engines(&cluster).await;
    let js = async_nats::jetstream::new(cluster.raw_client().await);
    let tally = Arc::new(Tally::default());
    let mut writers = Writers::start(&engines, &tally);
    writers.wait_for_more(CALLS_BEFORE).await;
    let victim = wait_stream_leader(&cluster, &js, STREAM).await;
    cluster.signal(victim, "STOP");
    writers.wait_for_more(CALLS_AFTER).await;
    cluster.signal(victim, "CONT");
    writers.wait_for_more(CALLS_AFTER).await;
    let calls = writers.stop().await;
    check("frozen leader", &cluster, &engines, calls, &tally).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_appends_survive_a_whole_cluster_restart() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3).await;
    let engines = engines(&cluster).await;
    let tally = Arc::new(Tally::default());
    let mut writers = Writers::start(&engines, &tally);
    writers.wait_for_more(CALLS_BEFORE).await;
    // Every node at once, mid-workload; the engines stay up and reconnect.
    for i in 0..3 {
        cluster.kill(i);
    }
    for i in 0..3 {
        cluster.restart_without_waiting(i);
    }
    // Writes go on once the cluster is back (before every node reports healthy, when the writers,
    // stalled until then, are far from their cap), and while the nodes catch up.
    writers.wait_for_more(CALLS_AFTER).await;
    for i in 0..3 {
        cluster.wait_healthy(i).await;
    }
    let calls = writers.stop().await;
    check("whole-cluster restart", &cluster, &engines, calls, &tally).await;
}

/// An operator's audit and stats started the moment the meta stream's leader dies: their listings
/// of the cluster's subjects are not answered until a new leader is elected, and are asked again
/// (bounded by the write timeout) instead of failing. Seen once in CI before: `Storage` from
/// "list a stream's subjects" right after a leader kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_and_stats_wait_out_an_election() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3).await;
    let engines = engines(&cluster).await;
    let s = engines[0].session(session_id(0)).expect("id");
    for i in 0..12 {
        s.append(palimpsest::Message::user(format!("turn {i} of a short talk"))).await.expect("append");
    }
    let outcome = s.compact(palimpsest::CompactionRequest::upto(Seq::new(8))).await.expect("compact");
    assert!(matches!(outcome, palimpsest::CompactionOutcome::Spliced { .. }), "{outcome:?}");
    let client = cluster.raw_client().await;
    let js = async_nats::jetstream::new(client.clone());
    let victim = wait_stream_leader(&cluster, &js, META).await;
    // The session stream led elsewhere, so only the meta stream elects (the listing of its blob
    // subjects, and its size, are what must wait).
    nats_common::make_leader(&cluster, &client, STREAM, (victim + 1) % 3).await;
    cluster.kill(victim);
    let report = bounded("audit", engines[1].audit_async(AuditOptions::default(), |_| {}))
        .await
        .expect("the audit waits out the election");
    assert!(report.ok && report.splices == 1 && report.blobs == 1, "{report:?}");
    let stats = bounded("stats", engines[1].stats_async()).await.expect("stats after the election");
    assert_eq!((stats.sessions, stats.events, stats.blobs), (1, 13, 1));
    cluster.restart(victim).await;
}
