//! Write-side ratios: buffered single-message appends against raw fjall inserts of the same bytes
//! (p3), and durable appends from 64 concurrent sessions against one writer (p4, group commit).

use std::time::{Duration, Instant};

use palimpsest::{Durability, Engine, Session};
use serde_json::{Value, json};

use crate::Plan;
use crate::raw::RawDb;
use crate::stats::{median, paired_ratio, round};
use crate::workload::{self, log, message};

/// p3. Each repeat appends `plan.append_calls` messages to a fresh engine database, one per
/// append, then inserts the very keys and values the engine stored into a fresh raw database, one
/// per insert. Database opening and the copy in between are not timed. For information, a third
/// side commits each event with the session's head value in one raw batch, as the engine's write
/// does minus its reads and encoding: the most an atomic event + head design can reach on fjall.
/// For context, a fourth side runs the engine's loop again with background memory extraction off
/// (the turn cap schedules one per closed episode; the raw sides run nothing like it), and a fifth
/// commits the same batches from plain byte slices, which fjall copies into its own buffers (the
/// third side passes fjall's slices read back from the engine's database, which it does not copy).
pub async fn append_ratio(plan: &Plan) -> Value {
    let id = "append-bench";
    let n = plan.append_calls as f64;
    let (mut engine_rate, mut raw_rate, mut batch_rate, mut quiet_rate) = (vec![], vec![], vec![], vec![]);
    let mut bytes_rate = vec![];
    for repeat in 0..plan.repeats {
        let dir = tempfile::tempdir().expect("a temp dir");
        engine_rate.push(appends_per_s(workload::open(dir.path(), Durability::Buffered), id, plan.append_calls).await);

        let rows = RawDb::engine_event_rows(dir.path(), id);
        let head = RawDb::engine_head(dir.path(), id);
        // Every append, plus the episode boundaries the turn cap writes between user turns. The raw
        // side inserts exactly these rows, so both sides handle the same bytes.
        assert!(rows.len() as u64 >= plan.append_calls, "the engine stored every append: {} rows", rows.len());
        let (raw_dir, batch_dir) = (tempfile::tempdir().expect("a temp dir"), tempfile::tempdir().expect("a temp dir"));
        let raw = RawDb::open(raw_dir.path());
        let start = Instant::now();
        for (key, value) in rows.iter().cloned() {
            raw.insert_event(key, value);
        }
        raw_rate.push(n / start.elapsed().as_secs_f64());

        // Plain bytes, made before the clock starts, for the side that hands fjall byte slices.
        let byte_rows: Vec<(Vec<u8>, Vec<u8>)> = rows.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        let raw = RawDb::open(batch_dir.path());
        let start = Instant::now();
        for (key, value) in rows {
            raw.commit_event_and_head(key, value, id, head.clone());
        }
        batch_rate.push(n / start.elapsed().as_secs_f64());

        let bytes_dir = tempfile::tempdir().expect("a temp dir");
        let raw = RawDb::open(bytes_dir.path());
        let head_bytes = head.to_vec();
        let start = Instant::now();
        for (key, value) in &byte_rows {
            raw.commit_event_and_head(key.as_slice(), value.as_slice(), id, head_bytes.as_slice());
        }
        bytes_rate.push(n / start.elapsed().as_secs_f64());

        let quiet_dir = tempfile::tempdir().expect("a temp dir");
        let quiet = workload::open_without_extraction(quiet_dir.path(), Durability::Buffered);
        quiet_rate.push(appends_per_s(quiet, id, plan.append_calls).await);
        log(format!(
            "p3 repeat {repeat}: engine {:.0} appends/s, raw {:.0} inserts/s, raw event+head batches {:.0}/s, \
             raw batches from byte slices {:.0}/s, engine without extraction {:.0} appends/s",
            engine_rate[repeat], raw_rate[repeat], batch_rate[repeat], bytes_rate[repeat], quiet_rate[repeat]
        ));
    }
    json!({
        "p3_append_vs_raw": round(paired_ratio(&engine_rate, &raw_rate), 3),
        "p3_engine_appends_per_s": round(median(&engine_rate), 0),
        "p3_raw_inserts_per_s": round(median(&raw_rate), 0),
        "p3_raw_event_head_batches_per_s": round(median(&batch_rate), 0),
        "p3_append_vs_raw_event_head_batch": round(paired_ratio(&engine_rate, &batch_rate), 3),
        "p3_raw_event_head_batches_from_bytes_per_s": round(median(&bytes_rate), 0),
        "p3_append_vs_raw_batch_from_bytes": round(paired_ratio(&engine_rate, &bytes_rate), 3),
        "p3_engine_no_extraction_appends_per_s": round(median(&quiet_rate), 0),
        "p3_no_extraction_vs_raw_event_head_batch": round(paired_ratio(&quiet_rate, &batch_rate), 3),
        "p3_appends_per_repeat": plan.append_calls,
    })
}

/// Buffered single-message appends of the first `calls` workload messages to session `id` of
/// `engine` (a fresh database), one per call; returns the appends per second. The messages are
/// made before the clock starts (the raw sides get their bytes ready-made too); the engine is
/// closed before returning, so its database can be read raw.
async fn appends_per_s(engine: Engine, id: &str, calls: u64) -> f64 {
    let session = workload::session(&engine, id);
    let messages: Vec<_> = (0..calls).map(message).collect();
    let start = Instant::now();
    for m in messages {
        session.append(m).await.expect("append");
    }
    let rate = calls as f64 / start.elapsed().as_secs_f64();
    drop((session, engine));
    rate
}

/// Appends from every session in `sessions` concurrently (one task each) for `phase`; returns the
/// appends per second. `next` holds each session's next workload message index.
async fn sync_appends_per_s(sessions: &[Session], next: &mut [u64], phase: Duration) -> f64 {
    let start = Instant::now();
    let deadline = start + phase;
    let mut tasks = Vec::with_capacity(sessions.len());
    for (session, &from) in sessions.iter().zip(next.iter()) {
        let session = session.clone();
        tasks.push(tokio::spawn(async move {
            let mut idx = from;
            while Instant::now() < deadline {
                session.append(message(idx)).await.expect("durable append");
                idx += 1;
            }
            idx
        }));
    }
    let mut appended = 0;
    for (task, slot) in tasks.into_iter().zip(next.iter_mut()) {
        let idx = task.await.expect("an append task panicked");
        appended += idx - *slot;
        *slot = idx;
    }
    appended as f64 / start.elapsed().as_secs_f64()
}

/// Bytes of the value each raw durable insert writes (about an event).
const RAW_SYNC_VALUE_BYTES: usize = 300;

/// The floor of group commit for `writers` sessions: raw fjall committing batches of `writers`
/// events (one per session, [`RAW_SYNC_VALUE_BYTES`] each) with one fsync per batch, back to back
/// for `phase`; returns events per second. No engine, no waiting for writers to gather: what the
/// disk and fjall allow when every fsync is shared by `writers` appends.
/// With `head` given, each batch also writes each session's head (`head`'s bytes), as the
/// engine's appends do: the floor for the engine's key shape, reported as context.
fn group_commit_floor(
    raw: &RawDb,
    seq: &mut u64,
    writers: usize,
    value: &[u8],
    head: Option<&[u8]>,
    phase: Duration,
) -> f64 {
    let start = Instant::now();
    let mut events = 0u64;
    let ids: Vec<String> = (0..writers).map(|w| format!("floor-{w:03}")).collect();
    while start.elapsed() < phase {
        *seq += 1;
        let rows: Vec<(Vec<u8>, &[u8])> = ids.iter().map(|id| (crate::raw::seq_key(id, *seq), value)).collect();
        let heads: Vec<(String, &[u8])> = match head {
            Some(head) => ids.iter().map(|id| (id.clone(), head)).collect(),
            None => Vec::new(),
        };
        raw.commit_synced(&rows, &heads);
        events += writers as u64;
    }
    events as f64 / start.elapsed().as_secs_f64()
}

/// p4. Durable (`Sync`) appends per second with `plan.p4_writers` sessions appending at once,
/// each from its own task on the multi-thread runtime, against a single writer; alternating.
/// For information, each repeat also times raw fjall insert + fsync in a loop: what one fsync
/// costs at that moment, which bounds the gain group commit can show (a cheap fsync leaves
/// little to share, and the 64 writers are then bound by CPU instead).
pub async fn group_commit_gain(plan: &Plan) -> Value {
    let dir = tempfile::tempdir().expect("a temp dir");
    let engine = workload::open(dir.path(), Durability::Sync);
    let sessions: Vec<Session> =
        (0..plan.p4_writers).map(|i| workload::session(&engine, &format!("writer-{i:03}"))).collect();
    let mut next = vec![0u64; sessions.len()];
    // Warm up: every session exists and the group-commit thread has run.
    sync_appends_per_s(&sessions, &mut next, Duration::from_millis(100)).await;

    let raw_dir = tempfile::tempdir().expect("a temp dir");
    let raw = RawDb::open(raw_dir.path());
    let value = vec![b'x'; RAW_SYNC_VALUE_BYTES];
    let mut raw_seq = 0u64;

    let floor_dir = tempfile::tempdir().expect("a temp dir");
    let floor = RawDb::open(floor_dir.path());
    let mut floor_seq = 0u64;
    // The same floor writing a head beside each event; the head is a real one (a session's after
    // a few appends), read from a closed engine database.
    let head = {
        let head_dir = tempfile::tempdir().expect("a temp dir");
        {
            let engine = workload::open(head_dir.path(), Durability::Buffered);
            workload::build(&workload::session(&engine, "head-source"), 0, 10).await;
        }
        RawDb::engine_head(head_dir.path(), "head-source").to_vec()
    };
    let heads_dir = tempfile::tempdir().expect("a temp dir");
    let heads_floor = RawDb::open(heads_dir.path());
    let mut heads_seq = 0u64;

    let (mut one, mut many, mut raw_sync, mut floor_rate, mut heads_rate) = (vec![], vec![], vec![], vec![], vec![]);
    for repeat in 0..plan.repeats {
        one.push(sync_appends_per_s(&sessions[..1], &mut next[..1], plan.p4_phase).await);
        many.push(sync_appends_per_s(&sessions, &mut next, plan.p4_phase).await);
        let start = Instant::now();
        let first = raw_seq;
        while start.elapsed() < plan.p4_phase {
            raw_seq += 1;
            raw.insert_event_synced(crate::raw::seq_key("raw-sync", raw_seq), &value);
        }
        raw_sync.push((raw_seq - first) as f64 / start.elapsed().as_secs_f64());
        floor_rate.push(group_commit_floor(&floor, &mut floor_seq, plan.p4_writers, &value, None, plan.p4_phase));
        heads_rate.push(group_commit_floor(
            &heads_floor,
            &mut heads_seq,
            plan.p4_writers,
            &value,
            Some(&head),
            plan.p4_phase,
        ));
        log(format!(
            "p4 repeat {repeat}: {:.0} durable appends/s with 1 writer, {:.0} with {}; raw insert+fsync {:.0}/s; \
             raw {}-event batches + fsync {:.0} events/s, with a head beside each event {:.0} events/s",
            one[repeat],
            many[repeat],
            plan.p4_writers,
            raw_sync[repeat],
            plan.p4_writers,
            floor_rate[repeat],
            heads_rate[repeat]
        ));
    }
    json!({
        "p4_group_commit_gain": round(paired_ratio(&many, &one), 3),
        "p4_sync_appends_per_s_many": round(median(&many), 0),
        "p4_sync_appends_per_s_one": round(median(&one), 0),
        "p4_raw_insert_fsync_per_s": round(median(&raw_sync), 0),
        "p4_one_writer_vs_raw_fsync": round(paired_ratio(&one, &raw_sync), 3),
        "p4_group_commit_vs_floor": round(paired_ratio(&many, &floor_rate), 3),
        "p4_raw_batch_fsync_events_per_s": round(median(&floor_rate), 0),
        // Context: the floor with the engine's key shape (an event and a head per append).
        "p4_raw_batch_with_heads_fsync_events_per_s": round(median(&heads_rate), 0),
        "p4_vs_floor_with_heads": round(paired_ratio(&many, &heads_rate), 3),
        "p4_writers": plan.p4_writers,
        "p4_phase_ms": plan.p4_phase.as_millis() as u64,
    })
}
