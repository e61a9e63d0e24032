//! The JetStream backend on a real 3-node cluster: records round-trip with dense seqs, a stale
//! version stores nothing, a retried publish is stored once, deletion purges and resumes, blobs
//! and memories round-trip, time travel and listing work.

mod nats_common;

use async_nats::HeaderMap;
use nats_common::{Cluster, commit, config, connect, text_of, wait_stream_leader};
use palimpsest::{Error, Head, Seq, SessionId, SummaryHash, Version};

fn texts(from: usize, n: usize) -> Vec<String> {
    (from..from + n).map(|i| format!("m{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_behaves_on_a_real_cluster() {
    let cluster = Cluster::start(3).await;
    let cfg = config(&cluster, "rt", 3);
    let log = connect(&cfg).await;

    appends_round_trip_with_dense_seqs(&log).await;
    a_stale_version_conflicts_and_stores_nothing(&log).await;
    a_retried_publish_with_the_same_id_is_stored_once(&cluster, &log).await;
    a_retry_finds_its_record_under_another_writers(&cluster).await;
    time_travel_and_window_reads_agree_with_a_fold(&log).await;
    reads_from_every_seq_of_interleaved_sessions(&log).await;
    deletion_purges_and_keeps_the_seqs_going(&log).await;
    blobs_and_memories_round_trip(&log).await;
    a_log_reads_its_own_memory_writes_through_a_follower(&cluster).await;
    listing_shows_live_sessions_in_id_order(&log).await;
    an_interrupted_deletion_is_finished_at_connect(&cluster).await;
}

async fn appends_round_trip_with_dense_seqs(log: &palimpsest::NatsLog) {
    let session = SessionId::new("chat.1:a@b").expect("valid id");
    assert_eq!(log.head(&session).await.expect("head"), None);
    let mut head = Head::default();
    let mut version = Version::NONE;
    for round in 0..20 {
        let (events, after) = commit(&head, &texts(round * 3, 3));
        let next = log.append(&session, version, &events, &after).await.expect("append");
        assert!(next > version, "versions grow");
        (head, version) = (after, next);
    }
    let (stored, at) = log.head(&session).await.expect("head").expect("a session with records");
    assert_eq!((stored.last_seq(), at), (Seq::new(60), version));
    let all = log.events(&session, Seq::new(1), Seq::new(1_000), 1_000).await.expect("events");
    assert_eq!(all.iter().map(|e| e.seq.get()).collect::<Vec<_>>(), (1..=60).collect::<Vec<_>>());
    assert_eq!(all.iter().map(text_of).collect::<Vec<_>>(), texts(0, 60));
    // A read from the middle, bounded by `to` and by `limit`.
    let middle = log.events(&session, Seq::new(31), Seq::new(40), 5).await.expect("events");
    assert_eq!(middle.iter().map(|e| e.seq.get()).collect::<Vec<_>>(), vec![31, 32, 33, 34, 35]);
    let tail = log.events(&session, Seq::new(58), Seq::new(100), 100).await.expect("events");
    assert_eq!(tail.iter().map(|e| e.seq.get()).collect::<Vec<_>>(), vec![58, 59, 60]);
}

async fn a_stale_version_conflicts_and_stores_nothing(log: &palimpsest::NatsLog) {
    let session = SessionId::new("conflict").expect("valid id");
    let (events, after) = commit(&Head::default(), &texts(0, 1));
    let first = log.append(&session, Version::NONE, &events, &after).await.expect("first append");
    // A second writer that also read "no records" is refused.
    let (other, other_after) = commit(&Head::default(), &["other".to_string()]);
    match log.append(&session, Version::NONE, &other, &other_after).await {
        Err(e @ Error::Conflict { expected: 0, .. }) => {
            let Error::Conflict { found, .. } = &e else { unreachable!() };
            assert_eq!(*found, Some(first.get()), "{e}");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    // So is one built on an older version after the session moved on.
    let (more, more_after) = commit(&after, &texts(1, 1));
    let second = log.append(&session, first, &more, &more_after).await.expect("second append");
    let (stale, stale_after) = commit(&after, &["stale".to_string()]);
    assert!(matches!(log.append(&session, first, &stale, &stale_after).await, Err(Error::Conflict { .. })));
    let (head, version) = log.head(&session).await.expect("head").expect("records");
    assert_eq!((head.last_seq(), version), (Seq::new(2), second));
    let all = log.events(&session, Seq::new(1), Seq::new(10), 10).await.expect("events");
    assert_eq!(all.iter().map(text_of).collect::<Vec<_>>(), texts(0, 2), "a refused append left nothing");
}

/// What the backend's retry relies on: the same `Nats-Msg-Id` published again (an attempt whose
/// acknowledgement was lost) is acknowledged as a duplicate, not stored again, even with the
/// version check that the first attempt already moved past.
async fn a_retried_publish_with_the_same_id_is_stored_once(cluster: &Cluster, log: &palimpsest::NatsLog) {
    let session = SessionId::new("dedupe").expect("valid id");
    let (events, after) = commit(&Head::default(), &texts(0, 1));
    log.append(&session, Version::NONE, &events, &after).await.expect("append");

    let client = cluster.raw_client().await;
    let js = async_nats::jetstream::new(client);
    let subject = format!("dd.s0.{}", hex(session.as_str()));
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "retry-1");
    headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
    // The raw publish goes to a stream of its own with the backend's settings, so the payload
    // need not be a record.
    nats_common::create_stream(
        &js,
        async_nats::jetstream::stream::Config {
            name: "dd_s0".to_string(),
            subjects: vec!["dd.s0.>".to_string()],
            num_replicas: 3,
            ..Default::default()
        },
    )
    .await;
    // A stream just created refuses publishes until its first leader is elected.
    wait_stream_leader(cluster, &js, "dd_s0").await;
    let first =
        js.publish_with_headers(subject.clone(), headers.clone(), "x".into()).await.expect("send").await.expect("ack");
    assert!(!first.duplicate);
    // The retry carries the same headers, whose expected sequence the first attempt made stale.
    let retry = js.publish_with_headers(subject.clone(), headers, "x".into()).await.expect("send").await.expect("ack");
    assert!(retry.duplicate, "a retry with the same id is a duplicate");
    assert_eq!(retry.sequence, first.sequence);
    let mut stream = js.get_stream("dd_s0").await.expect("stream");
    assert_eq!(stream.info().await.expect("info").state.messages, 1, "stored once");
    // Through the backend: the caller's retry of a commit whose outcome it did not learn (the same
    // events and head at the same version) is answered with the first one's version, not stored
    // again, and not refused as a conflict.
    let (_, version) = log.head(&session).await.expect("head").expect("records");
    let (more, more_after) = commit(&after, &texts(1, 1));
    let stored = log.append(&session, version, &more, &more_after).await.expect("append");
    let again = log.append(&session, version, &more, &more_after).await.expect("the same commit again");
    assert_eq!(again, stored, "the retry is the first append");
    let all = log.events(&session, Seq::new(1), Seq::new(10), 10).await.expect("events");
    assert_eq!(all.iter().map(text_of).collect::<Vec<_>>(), texts(0, 2), "stored once");
    // Another connection with the very same commit is a different writer: refused.
    let other = connect(&config(cluster, "rt", 3)).await;
    assert!(matches!(other.append(&session, version, &more, &more_after).await, Err(Error::Conflict { .. })));
}

/// A caller's retry of a commit whose acknowledgement it did not get (the same events and head at
/// the same version) after the server stopped answering its id as a duplicate (here: past a short
/// duplicate window; in a failover: a new leader) and after another writer appended on top of it:
/// the commit is the record right after the version it was built on, so the retry is answered with
/// that record's version. Answered `Conflict` ("not stored"), the engine would build it again on
/// the fresh head and store its messages twice.
async fn a_retry_finds_its_record_under_another_writers(cluster: &Cluster) {
    let client = cluster.raw_client().await;
    let js = async_nats::jetstream::new(client);
    // The backend's session stream, made beforehand with a one-second duplicate window (connect
    // checks replicas, subjects and direct gets, and keeps the stream).
    nats_common::create_stream(
        &js,
        async_nats::jetstream::stream::Config {
            name: "dw_s0".to_string(),
            subjects: vec!["dw.s0.>".to_string()],
            num_replicas: 3,
            allow_direct: true,
            duplicate_window: std::time::Duration::from_secs(1),
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        },
    )
    .await;
    wait_stream_leader(cluster, &js, "dw_s0").await;
    let cfg = config(cluster, "dw", 3);
    let (a, b) = (connect(&cfg).await, connect(&cfg).await);
    wait_stream_leader(cluster, &js, "dw_meta").await;
    let session = SessionId::new("retried").expect("valid id");
    let (events, after) = commit(&Head::default(), &texts(0, 1));
    let first = a.append(&session, Version::NONE, &events, &after).await.expect("a's append");
    let (other, other_after) = commit(&after, &["b".to_string()]);
    b.append(&session, first, &other, &other_after).await.expect("b's append on top");
    // Until a probe published after a's commit is no longer a duplicate, so neither is a's id
    // (the server forgets ids oldest first). Polls the server's clock, bounded.
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "probe-after-a");
    let probe = format!("dw.s0.{}", hex("probe"));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut stored = 0;
    loop {
        let ack = js.publish_with_headers(probe.clone(), headers.clone(), "p".into()).await.expect("send").await;
        if !ack.expect("probe ack").duplicate {
            stored += 1;
            if stored == 2 {
                break;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "the duplicate window never passed");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let again = a.append(&session, Version::NONE, &events, &after).await.expect("a's retry is its first append");
    assert_eq!(again, first);
    let all = a.events(&session, Seq::new(1), Seq::new(10), 10).await.expect("events");
    assert_eq!(all.iter().map(text_of).collect::<Vec<_>>(), ["m0", "b"], "stored once, b's on top");
}

async fn time_travel_and_window_reads_agree_with_a_fold(log: &palimpsest::NatsLog) {
    let session = SessionId::new("travel").expect("valid id");
    let mut head = Head::default();
    let mut version = Version::NONE;
    let mut heads = vec![Head::default()];
    for round in 0..10 {
        let (events, after) = commit(&head, &texts(round * 4, 4));
        let mut h = head.clone();
        for e in &events {
            palimpsest::apply(&mut h, e);
            heads.push(h.clone());
        }
        version = log.append(&session, version, &events, &after).await.expect("append");
        head = after;
    }
    for seq in [1_u64, 2, 4, 5, 17, 39, 40] {
        let at = log.head_at(&session, Seq::new(seq)).await.expect("head_at").expect("records");
        assert_eq!(at, heads[seq as usize], "head after seq {seq}");
    }
    for n in [0_usize, 1, 3, 4, 5, 17, 40, 100] {
        let window = log.window(&session, n).await.expect("window");
        let want: Vec<String> = texts(0, 40).into_iter().rev().take(n).rev().collect();
        assert_eq!(window.iter().map(text_of).collect::<Vec<_>>(), want, "window of {n}");
    }
}

/// Two sessions written in turns into one stream, with commits of 1 to 3 events: a read from
/// every seq of each (the search for its record gallops back over the other's records) returns
/// exactly that seq onwards, and time travel to every seq agrees with the fold.
async fn reads_from_every_seq_of_interleaved_sessions(log: &palimpsest::NatsLog) {
    let ids = [SessionId::new("weave.a").expect("valid id"), SessionId::new("weave.b").expect("valid id")];
    let mut state = [(Head::default(), Version::NONE), (Head::default(), Version::NONE)];
    let mut heads: [Vec<Head>; 2] = [vec![Head::default()], vec![Head::default()]];
    for round in 0..40_usize {
        let which = usize::from(round % 3 == 0);
        let (head, version) = &state[which];
        let (events, after) = commit(head, &texts(round * 10, 1 + round % 3));
        let mut h = head.clone();
        for e in &events {
            palimpsest::apply(&mut h, e);
            heads[which].push(h.clone());
        }
        let next = log.append(&ids[which], *version, &events, &after).await.expect("append");
        state[which] = (after, next);
    }
    for (which, id) in ids.iter().enumerate() {
        let last = state[which].0.last_seq().get();
        for from in 1..=last {
            let read = log.events(id, Seq::new(from), Seq::new(last), 1_000).await.expect("events");
            let seqs: Vec<u64> = read.iter().map(|e| e.seq.get()).collect();
            assert_eq!(seqs, (from..=last).collect::<Vec<_>>(), "{id} from {from}");
            let at = log.head_at(id, Seq::new(from)).await.expect("head_at").expect("records");
            assert_eq!(at, heads[which][from as usize], "{id}: head after seq {from}");
        }
    }
}

async fn deletion_purges_and_keeps_the_seqs_going(log: &palimpsest::NatsLog) {
    let session = SessionId::new("doomed").expect("valid id");
    let (events, after) = commit(&Head::default(), &texts(0, 5));
    let version = log.append(&session, Version::NONE, &events, &after).await.expect("append");
    let tombstone = deletion(&after);
    let deleted = log.append(&session, version, &[tombstone.0], &tombstone.1).await.expect("delete");
    let (head, at) = log.head(&session).await.expect("head").expect("the tombstone stays");
    assert!(head.is_deleted());
    assert_eq!(at, deleted);
    let window = log.window(&session, 10).await.expect("window");
    assert_eq!(window.iter().map(|e| e.seq.get()).collect::<Vec<_>>(), vec![6], "reads start at the tombstone");
    assert!(log.events(&session, Seq::new(1), Seq::new(5), 10).await.expect("events").is_empty(), "purged");
    let (events, after) = commit(&head, &texts(10, 2));
    log.append(&session, deleted, &events, &after).await.expect("append after deletion");
    let window = log.window(&session, 10).await.expect("window");
    assert_eq!(window.iter().map(|e| e.seq.get()).collect::<Vec<_>>(), vec![6, 7, 8], "seqs go on after the tombstone");
}

async fn blobs_and_memories_round_trip(log: &palimpsest::NatsLog) {
    let hash = log.put_blob("a summary").await.expect("put blob");
    assert_eq!(hash, SummaryHash::of("a summary"));
    assert_eq!(log.put_blob("a summary").await.expect("again"), hash, "idempotent");
    assert_eq!(log.blob(&hash).await.expect("blob").as_deref(), Some("a summary"));
    assert_eq!(log.blob(&SummaryHash::of("never stored")).await.expect("blob"), None);
    log.put_memory("team.a", "k1", b"one").await.expect("memory");
    log.put_memory("team.a", "k2", b"two").await.expect("memory");
    log.put_memory("team.b", "k1", b"other").await.expect("memory");
    log.put_memory("team.a", "k1", b"uno").await.expect("replace");
    let mut memories = log.memories("team.a", 10).await.expect("memories");
    memories.sort();
    assert_eq!(memories, vec![("k1".to_string(), b"uno".to_vec()), ("k2".to_string(), b"two".to_vec())]);
    assert_eq!(log.memories("team.a", 1).await.expect("memories").len(), 1, "bounded by the limit");
}

/// Read-your-writes on the meta stream: a log connected only to a follower of the meta stream
/// (whose direct gets that follower answers) replaces a memory and lists the namespace, again and
/// again. The follower applies a write after the leader acknowledged it, so a listing by direct
/// get showed the value before (on a loaded machine within about 600 rounds, every run); the
/// listing reads from the leader.
async fn a_log_reads_its_own_memory_writes_through_a_follower(cluster: &Cluster) {
    let prefix = "ryw";
    let probe = connect(&config(cluster, prefix, 3)).await;
    let js = async_nats::jetstream::new(cluster.raw_client().await);
    let leader = wait_stream_leader(cluster, &js, &format!("{prefix}_meta")).await;
    let follower = (0..3).find(|&i| i != leader).expect("a 3-node cluster has followers");
    drop(probe);
    let mut cfg = config(cluster, prefix, 3);
    cfg.urls = vec![cluster.urls()[follower].clone()];
    let log = connect(&cfg).await;
    for round in 0..1000u32 {
        let value = round.to_be_bytes();
        log.put_memory("ryw", "k", &value).await.expect("replace the memory");
        let memories = log.memories("ryw", 10).await.expect("memories");
        assert_eq!(memories, vec![("k".to_string(), value.to_vec())], "round {round}: the write just acknowledged");
    }
}

async fn listing_shows_live_sessions_in_id_order(log: &palimpsest::NatsLog) {
    let all = log.sessions(None, 100).await.expect("sessions");
    let names: Vec<&str> = all.iter().map(SessionId::as_str).collect();
    assert_eq!(names, vec!["chat.1:a@b", "conflict", "dedupe", "doomed", "travel", "weave.a", "weave.b"]);
    let after = SessionId::new("conflict").expect("valid id");
    let page = log.sessions(Some(&after), 2).await.expect("sessions");
    assert_eq!(page.iter().map(SessionId::as_str).collect::<Vec<_>>(), vec!["dedupe", "doomed"]);
}

/// A deletion whose process died after the tombstone but before the purge: its marker is still
/// in the meta stream, and the next connect purges the session and removes the marker.
async fn an_interrupted_deletion_is_finished_at_connect(cluster: &Cluster) {
    use futures_util::StreamExt;
    let cfg = config(cluster, "resume", 3);
    let log = connect(&cfg).await;
    let session = SessionId::new("half-deleted").expect("valid id");
    let (events, after) = commit(&Head::default(), &texts(0, 3));
    let version = log.append(&session, Version::NONE, &events, &after).await.expect("append");
    let (more, more_after) = commit(&after, &texts(3, 1));
    let version = log.append(&session, version, &more, &more_after).await.expect("append");
    let (tombstone, tomb_head) = deletion(&more_after);
    let deleted =
        log.append_stopping_before_purge(&session, version, &[tombstone], &tomb_head).await.expect("tombstone");

    let client = cluster.raw_client().await;
    let js = async_nats::jetstream::new(client);
    let subject = format!("resume.s0.{}", hex(session.as_str()));
    let count = |js: async_nats::jetstream::Context, filter: String, stream: &'static str| async move {
        let s = js.get_stream(stream).await.expect("stream");
        let subjects: Vec<_> = s.info_with_subjects(filter).await.expect("subjects").collect().await;
        subjects.into_iter().map(|r| r.expect("subject").1).sum::<usize>()
    };
    assert_eq!(count(js.clone(), subject.clone(), "resume_s0").await, 3, "two records and the tombstone");
    assert_eq!(count(js.clone(), "resume.m.d.>".to_string(), "resume_meta").await, 1, "the marker");

    let reopened = connect(&cfg).await;
    assert_eq!(count(js.clone(), subject, "resume_s0").await, 1, "only the tombstone is left");
    assert_eq!(count(js.clone(), "resume.m.d.>".to_string(), "resume_meta").await, 0, "the marker is gone");
    let (head, at) = reopened.head(&session).await.expect("head").expect("tombstone");
    assert!(head.is_deleted());
    assert_eq!(at, deleted);
}

fn deletion(head: &Head) -> (palimpsest::Event, Head) {
    let event = palimpsest::Event {
        seq: head.last_seq().next(),
        at_ms: 2,
        kind: palimpsest::EventKind::SessionDeleted { n_events_removed: head.last_seq().get() - head.base().get() },
    };
    let mut after = head.clone();
    palimpsest::apply(&mut after, &event);
    (event, after)
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}
