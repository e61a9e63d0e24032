//! Power-loss harness over raw fjall, with no engine: the same six keyspaces and the same memtable
//! configuration as `src/storage/fjall.rs` (small memtables, as in the engine harness), the same atomic
//! multi-keyspace batch per write (events + head, committed with `PersistMode::Buffer`, then
//! `Database::persist(SyncData)`), on the `powerloss` FUSE file system. It tells which layer
//! loses what: a failure here is fjall's (or the disk model's), not the engine's.
//!
//! A writer child appends batches to a few sessions - one event and its head, or an "import" of a
//! few hundred events and the head in one batch - and reports each after its persist returns.
//! After a random number of reports the file system cuts the power right after a random number of
//! further writes (dropped or torn), and the child is killed. A verifier child opens
//! the database, reads every key of every keyspace (a damaged table fails the scan), and reports
//! each session's head and events. Checked after every cut: the database opens, every scan
//! succeeds, every event's checksum holds, each session's events are exactly `1..=head` (no head
//! without its events, no events past the head: batches are atomic), and every acknowledged
//! batch is present.
//!
//! `harness = false`; `PALIMPSEST_POWERLOSS_ROUNDS` (default 100), `PALIMPSEST_POWERLOSS_SEED`,
//! `PALIMPSEST_POWERLOSS_MODEL` (see `powerloss::Model`). Under `strict_dirs` raw fjall loses whole
//! databases (SPEC.md section 10); `PALIMPSEST_POWERLOSS_FJALL_SYNC_DIRS=1` applies the engine's
//! workaround in the writer, to look for what else fails.

mod common;
mod powerloss_common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use common::Rng;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use powerloss_common::{Child, Rig, cut_for, digest, rounds, seed_from_clock};

const WRITER_ENV: &str = "PALIMPSEST_POWERLOSS_FJALL_WRITER";
const VERIFIER_ENV: &str = "PALIMPSEST_POWERLOSS_FJALL_VERIFIER";
/// Set: after opening, fsync the directories fjall leaves unsynced, as `Store::open` does.
const SYNC_DIRS_ENV: &str = "PALIMPSEST_POWERLOSS_FJALL_SYNC_DIRS";
const KEYSPACES: [&str; 6] = ["events", "heads", "splices", "blobs", "meta", "memories"];
const SESSIONS: u64 = 8;
const FRESH_DB_EVERY: u64 = 20;
/// The engine harness's memtable size (see `acknowledged_writes_survive_power_loss.rs`).
const MEMTABLE_BYTES: u64 = 128 << 10;
const CACHE_BYTES: u64 = 16 << 20;
/// Cuts in the default run: half the engine harness's, since this one only tells layers apart
/// and both run in CI.
const DEFAULT_ROUNDS: u64 = 100;

fn main() {
    if let Ok(spec) = std::env::var(WRITER_ENV) {
        return writer(&spec);
    }
    if let Ok(dir) = std::env::var(VERIFIER_ENV) {
        return verifier(Path::new(&dir));
    }
    parent();
}

fn open(dir: &Path) -> fjall::Result<(Database, Vec<Keyspace>)> {
    let db = Database::builder(dir).cache_size(CACHE_BYTES).open()?;
    let options = || KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES);
    let keyspaces = KEYSPACES.iter().map(|name| db.keyspace(name, options)).collect::<fjall::Result<Vec<_>>>()?;
    if std::env::var_os(SYNC_DIRS_ENV).is_some() {
        // The engine's workaround (`store::sync_new_directories`): the entries fjall never syncs.
        for d in [dir.parent().expect("the mount root"), dir, &dir.join("keyspaces")] {
            std::fs::File::open(d)?.sync_all()?;
        }
    }
    Ok((db, keyspaces))
}

fn event_key(session: u64, seq: u64) -> Vec<u8> {
    let mut key = format!("k{session}\0").into_bytes();
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// An event value: a 16-hex-digit checksum, then the payload it covers.
fn event_value(payload: &str) -> Vec<u8> {
    format!("{}{payload}", digest(payload.as_bytes())).into_bytes()
}

fn writer(spec: &str) {
    let (dir, seed) = spec.split_once('|').expect("spec");
    let mut rng = Rng(seed.parse().expect("seed"));
    let (db, ks) = open(Path::new(dir)).expect("open");
    let (events, heads) = (&ks[0], &ks[1]);
    let mut out = std::io::stdout().lock();
    loop {
        let k = rng.below(SESSIONS);
        let head_key = format!("k{k}").into_bytes();
        let last = heads
            .get(&head_key)
            .expect("read head")
            .map_or(0, |v| u64::from_be_bytes(v.as_ref().try_into().expect("8-byte head")));
        // One batch in thirty is an "import": enough events to fill a memtable in one batch.
        let n = if rng.below(30) == 0 { 50 + rng.below(250) } else { 1 };
        let mut batch = db.batch().durability(Some(PersistMode::Buffer));
        for seq in last + 1..=last + n {
            let payload = format!("{seed}/{k}/{seq}/{}", "x".repeat(rng.below(1_000) as usize));
            batch.insert(events, event_key(k, seq), event_value(&payload));
        }
        batch.insert(heads, head_key, (last + n).to_be_bytes());
        batch.commit().expect("commit");
        db.persist(PersistMode::SyncData).expect("persist");
        writeln!(out, "ack k{k} {}", last + n).expect("pipe");
        out.flush().expect("pipe");
    }
}

/// Prints `open-failed E`, `scan-failed KS E`, `bad-event S SEQ`, `head S LAST`, `events S FIRST LAST COUNT`, `done`.
fn verifier(dir: &Path) {
    let mut out = std::io::stdout().lock();
    let (_db, ks) = match open(dir) {
        Ok(opened) => opened,
        Err(e) => {
            writeln!(out, "open-failed {e:?}").expect("pipe");
            std::process::exit(1);
        }
    };
    for (name, keyspace) in KEYSPACES.iter().zip(&ks) {
        for guard in keyspace.iter() {
            if let Err(e) = guard.into_inner() {
                writeln!(out, "scan-failed {name} {e:?}").expect("pipe");
                break;
            }
        }
    }
    // session -> (first seq, last seq, count)
    let mut spans: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for guard in ks[0].iter() {
        let Ok((key, value)) = guard.into_inner() else { break };
        let split = key.iter().position(|&b| b == 0).expect("session separator");
        let session = String::from_utf8_lossy(&key[..split]).into_owned();
        let seq = u64::from_be_bytes(key[split + 1..].try_into().expect("8-byte seq"));
        let (sum, payload) = value.split_at(16.min(value.len()));
        if sum != digest(payload).as_bytes() {
            writeln!(out, "bad-event {session} {seq}").expect("pipe");
        }
        let span = spans.entry(session).or_insert((seq, seq, 0));
        span.1 = seq;
        span.2 += 1;
    }
    for guard in ks[1].iter() {
        let Ok((key, value)) = guard.into_inner() else { break };
        let last = u64::from_be_bytes(value.as_ref().try_into().expect("8-byte head"));
        writeln!(out, "head {} {last}", String::from_utf8_lossy(&key)).expect("pipe");
    }
    for (session, (first, last, count)) in spans {
        writeln!(out, "events {session} {first} {last} {count}").expect("pipe");
    }
    writeln!(out, "done").expect("pipe");
    out.flush().expect("pipe");
    // No clean close: the next round starts from what the cut left.
    std::process::exit(0);
}

fn parent() {
    let rounds = rounds(DEFAULT_ROUNDS);
    let seed0 = seed_from_clock();
    println!("powerloss (raw fjall): {rounds} cuts, seed {seed0}");
    let started = std::time::Instant::now();
    let rig = Rig::new();
    let mut rng = Rng(seed0);
    let mut generation = 0;
    // session -> highest acknowledged head
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let (mut acks, mut torn, mut tables, mut cuts_dropping, mut dropped_bytes) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut failures = Vec::new();
    for round in 0..rounds {
        if round > 0 && round % FRESH_DB_EVERY == 0 {
            generation = round;
            acked.clear();
        }
        let db = rig.db(generation);
        let mut child = Child::spawn(&[(WRITER_ENV, format!("{}|{}", db.display(), rng.next() % 1_000_000_007))]);
        let cut_after = if rng.below(10) == 0 { 0 } else { 1 + rng.below(powerloss_common::MAX_LINES_BEFORE_CUT) };
        let mut lines = child.take(cut_after, round);
        let cut = cut_for(round, rng.next());
        let dropped = rig.cut_mid_work(cut, rng.below(powerloss_common::MAX_WRITES_BEFORE_CUT));
        cuts_dropping += u64::from(dropped.dirty_bytes > 0);
        dropped_bytes += dropped.dirty_bytes;
        lines.extend(child.kill());
        rig.mount.power_on();
        torn += u64::from(matches!(cut, powerloss::Cut::Torn { .. }));
        for line in &lines {
            let (session, last) = line.strip_prefix("ack ").and_then(|l| l.split_once(' ')).expect("ack line");
            let last: u64 = last.parse().expect("seq");
            let entry = acked.entry(session.to_string()).or_default();
            *entry = (*entry).max(last);
            acks += 1;
        }
        let why = format!("round {round}, {cut:?}, {} acks, seed {seed0}", lines.len());
        let report = Child::spawn_verifier(&[(VERIFIER_ENV, db.display().to_string())]).finish(round);
        let mut problems = Vec::new();
        let mut heads: BTreeMap<String, u64> = BTreeMap::new();
        let mut spans: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
        for line in &report {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.as_slice() {
                ["head", s, last] => {
                    heads.insert(s.to_string(), last.parse().expect("last"));
                }
                ["events", s, first, last, count] => {
                    let span = (first.parse().expect("n"), last.parse().expect("n"), count.parse().expect("n"));
                    spans.insert(s.to_string(), span);
                }
                ["done"] => {}
                _ => problems.push(line.clone()),
            }
        }
        if report.last().map(String::as_str) != Some("done") {
            problems.push(format!("verifier did not finish: {report:?}"));
        }
        for session in heads.keys().chain(spans.keys()) {
            let head = heads.get(session).copied().unwrap_or(0);
            let span = spans.get(session).copied().unwrap_or((1, 0, 0));
            if head > 0 && span != (1, head, head) {
                problems.push(format!("{session}: head {head} but events (first, last, count) {span:?}"));
            }
            if head == 0 && span.2 > 0 {
                problems.push(format!("{session}: events {span:?} without a head"));
            }
        }
        for (session, last) in &acked {
            if heads.get(session).copied().unwrap_or(0) < *last {
                problems.push(format!("{session}: acknowledged head {last} lost (head now {:?})", heads.get(session)));
            }
        }
        tables = tables.max(powerloss_common::table_files(&db));
        if !problems.is_empty() {
            failures.push(format!("{why}: {problems:?}"));
            // Later rounds on a damaged database would only repeat the damage: start a fresh one.
            generation = round + 1;
            acked.clear();
        }
    }
    println!(
        "powerloss (raw fjall): {rounds} power cuts ({torn} torn, {cuts_dropping} dropping unsynced data, {:.1} MB \
         in all), {acks} acknowledged batches, up to {tables} table files in a database, {} failed rounds, {:.0} s",
        dropped_bytes as f64 / 1e6,
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    println!("powerloss (raw fjall): {}", rig.model_summary());
    assert!(failures.is_empty(), "raw fjall lost data or atomicity across power cuts:\n{}", failures.join("\n"));
    println!("test result: ok. 1 passed; 0 failed");
}
