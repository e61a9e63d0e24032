//! Power-loss harness over the engine. The database lives on the `powerloss` FUSE file system,
//! which keeps unsynced data in memory until fsync. A child process runs a mixed workload on a
//! few sessions - user turns, tool calls answered later, background compactions, imports of a few
//! hundred messages, the odd deletion - and reports every acknowledged event, splice and
//! deletion on stdout. After a random number of reports the harness arms a cut that the file
//! system makes right after a random number (0 to 63) of further file writes, so it lands mid-work:
//! inside a journal append, a table flush, a version update. Unsynced data is dropped, or torn (a
//! random half of its pages written back); then the child is SIGKILLed. With power back, a
//! verifier child opens the same directory, audits it and dumps every session; the harness checks:
//! the database opens, the audit is clean (dense logs, heads equal to the replay, splices sound:
//! nothing half-written), and
//! - `sync` rounds: every acknowledged event and splice is present at its seq, byte for byte;
//! - `buffered` rounds: each session keeps a prefix of what was acknowledged (an acknowledged event
//!   may be lost, but never replaced, and never while a later one survives).
//!
//! The database carries over from round to round (every `FRESH_DB_EVERY`th round (20) starts a fresh
//! one), so memtables grow across rounds and flushes, journal rotations and compactions land
//! between cuts. The verifier exits without closing the engine, so nothing is flushed at close
//! that a real power cut would not flush either.
//!
//! `harness = false`: the binary is parent, writer and verifier (chosen by env vars).
//! `PALIMPSEST_POWERLOSS_ROUNDS` sets the number of cuts (default 200) for soaks;
//! `PALIMPSEST_POWERLOSS_SEED` replays a run; `PALIMPSEST_POWERLOSS_MODEL` (`strict_dirs`, `delalloc`,
//! or both comma-separated; see `powerloss::Model`) picks a stricter disk.
//!
//! `PALIMPSEST_POWERLOSS_CUT=clear-cache` is not a test but the reproduction of issue 16's LazyFS
//! runs: each round drops the unsynced data with the power left on (`powerloss::Cut::ClearCache`,
//! LazyFS's `clear-cache`), lets the writer go on for up to 60 more reports, then kills it. The
//! verifier's findings are tallied instead of failing the run (a damaged database is replaced by a
//! fresh one), and the tally is printed: what clearing a cache under a live process does, which no
//! power cut can (SPEC section 10).

mod common;
mod powerloss_common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{FnSummarizer, Rng};
use palimpsest::{
    AuditOptions, CompactionOutcome, CompactionRequest, Config, Durability, Engine, EventKind, Message, Seq, ToolCall,
};
use powerloss::Cut;
use powerloss_common::{Child, Rig, cut_for, digest, rounds, seed_from_clock};

const WRITER_ENV: &str = "PALIMPSEST_POWERLOSS_WRITER";
const VERIFIER_ENV: &str = "PALIMPSEST_POWERLOSS_VERIFIER";
const SESSIONS: u64 = 8;
const FRESH_DB_EVERY: u64 = 20;
/// Messages in a big import (about a megabyte: several memtables).
const BIG_IMPORT_MESSAGES: u64 = 600;
/// Memtable size in the children: small, so fjall flushes, compacts and rotates on little data.
const TEST_MEMTABLE_BYTES: u64 = 128 << 10;
/// Events the verifier reads per history call.
const DUMP_PAGE: usize = 1_000;

fn main() {
    if let Ok(spec) = std::env::var(WRITER_ENV) {
        return writer(&spec);
    }
    if let Ok(dir) = std::env::var(VERIFIER_ENV) {
        return verifier(Path::new(&dir));
    }
    parent();
}

fn open(dir: &Path, durability: Durability, summarizer: Arc<FnSummarizer>) -> palimpsest::Result<Engine> {
    let mut config = Config::new(dir);
    config.durability = durability;
    config.compaction.keep_last_messages = 4;
    Engine::open_with_summarizer(config, summarizer)
}

/// Text of `n_bytes`, different for every `n`.
fn filler(n: u64, n_bytes: u64) -> String {
    let mut s = format!("m{n} ");
    while (s.len() as u64) < n_bytes {
        s.push_str("lorem ipsum dolor sit amet ");
    }
    s
}

/// The workload. Prints `ack S SEQ DIGEST`, `splice S SEQ UPTO HASH`, `del S SEQ`.
fn writer(spec: &str) {
    let parts: Vec<&str> = spec.split('|').collect();
    let (dir, seed) = (parts[0], parts[1].parse::<u64>().expect("seed"));
    let durability = if parts[2] == "sync" { Durability::Sync } else { Durability::Buffered };
    let slow = FnSummarizer::new(|input| {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(2 + input.messages.len() as u64 % 10)).await;
            Ok(format!("summary of {} messages", input.messages.len()))
        })
    });
    let engine = open(Path::new(dir), durability, slow).expect("open");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let out = Arc::new(parking_lot::Mutex::new(std::io::stdout()));
    let say = move |line: String| {
        let mut out = out.lock();
        writeln!(out, "{line}").expect("pipe");
        out.flush().expect("pipe");
    };
    runtime.block_on(async {
        let mut rng = Rng(seed);
        let mut open_calls: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for k in 0..SESSIONS {
            let s = engine.session(format!("k{k}")).expect("id");
            if let Some(head) = s.head().await.expect("head") {
                open_calls.insert(k, head.open_calls().iter().map(|c| c.id.clone()).collect());
            }
        }
        for n in 0u64.. {
            let k = rng.below(SESSIONS);
            let s = engine.session(format!("k{k}")).expect("id");
            let calls = open_calls.entry(k).or_default();
            let message = match rng.below(24) {
                0..=7 => Message::user(filler(n, 20 + rng.below(2_000))),
                8..=11 => {
                    let id = format!("c{seed}-{n}");
                    calls.push(id.clone());
                    Message::assistant_tool_calls("", vec![ToolCall::new(id, "grep", format!("{{\"n\":{n}}}"))])
                }
                12..=15 if !calls.is_empty() => {
                    let id = calls.remove(rng.below(calls.len() as u64) as usize);
                    Message::tool_result(id, filler(n, 20 + rng.below(4_000)))
                }
                16 | 17 => {
                    let (s, say) = (s.clone(), say.clone());
                    tokio::spawn(async move {
                        if let Ok(CompactionOutcome::Spliced { seq, upto, summary_hash, .. }) =
                            s.compact(CompactionRequest::default()).await
                        {
                            say(format!("splice {} {seq} {upto} {summary_hash}", s.id()));
                        }
                    });
                    continue;
                }
                18 => {
                    let target = engine.session(format!("imp-{seed}-{n}")).expect("id");
                    // One import in four is big enough to fill several memtables and make fjall
                    // flush while the import's batch is not yet synced.
                    let (count, max_bytes) =
                        if rng.below(4) == 0 { (BIG_IMPORT_MESSAGES, 3_000) } else { (100 + rng.below(300), 1_000) };
                    let contents: Vec<String> =
                        (0..count).map(|i| filler(n * 10_000 + i, 50 + rng.below(max_bytes))).collect();
                    let text: String = contents
                        .iter()
                        .enumerate()
                        .map(|(i, c)| {
                            let role = if i % 2 == 0 { "user" } else { "assistant" };
                            format!("{}\n", serde_json::json!({ "role": role, "content": c }))
                        })
                        .collect();
                    let report = target.import_jsonl(&text).await.expect("import");
                    for (i, c) in contents.iter().enumerate() {
                        say(format!(
                            "ack {} {} {}",
                            target.id(),
                            report.first_seq.get() + i as u64,
                            digest(c.as_bytes())
                        ));
                    }
                    continue;
                }
                19 if rng.below(10) == 0 => {
                    if let Ok(seq) = s.delete().await {
                        calls.clear();
                        say(format!("del {} {seq}", s.id()));
                    }
                    continue;
                }
                _ => Message::assistant(filler(n, 10 + rng.below(500))),
            };
            let d = digest(message.content.as_bytes());
            let seq = s.append(message).await.expect("append");
            say(format!("ack {} {seq} {d}", s.id()));
        }
    });
}

/// Opens the database, audits it and dumps every session, then exits without closing the engine.
/// Prints `open-failed E`, `audit-failed V`, `audit-ok`, `head S BASE LAST`, `ev S SEQ DIGEST`,
/// `sp S SEQ UPTO HASH`, `done`.
fn verifier(dir: &Path) {
    let mut out = std::io::stdout().lock();
    let engine = match open(dir, Durability::Sync, FnSummarizer::constant("unused")) {
        Ok(engine) => engine,
        Err(e) => {
            writeln!(out, "open-failed {e:?}").expect("pipe");
            std::process::exit(1);
        }
    };
    match engine.audit(&AuditOptions::default(), &mut |_| {}) {
        Ok(report) if report.ok => writeln!(out, "audit-ok").expect("pipe"),
        Ok(report) => writeln!(out, "audit-failed {:?}", report.violations).expect("pipe"),
        Err(e) => writeln!(out, "audit-failed to run: {e:?}").expect("pipe"),
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let mut after = None;
        loop {
            let ids = engine.list_sessions(after.as_ref(), 100).await.expect("list sessions");
            let Some(last) = ids.last().cloned() else { break };
            for id in ids {
                let s = engine.session(id.as_str()).expect("id");
                let Some(head) = s.head().await.expect("head") else { continue };
                writeln!(out, "head {id} {} {}", head.base().get(), head.last_seq().get()).expect("pipe");
                let mut from = head.base().get() + 1;
                loop {
                    let events = s.history(Seq::new(from), DUMP_PAGE).await.expect("history");
                    for e in &events {
                        match &e.kind {
                            EventKind::CompactionSpliced(sp) => {
                                writeln!(out, "sp {id} {} {} {}", e.seq.get(), sp.upto.get(), sp.summary_hash.to_hex())
                                    .expect("pipe")
                            }
                            _ => {
                                if let Some(m) = e.message() {
                                    writeln!(out, "ev {id} {} {}", e.seq.get(), digest(m.content.as_bytes()))
                                        .expect("pipe");
                                }
                            }
                        }
                    }
                    match events.last() {
                        Some(e) if events.len() == DUMP_PAGE => from = e.seq.get() + 1,
                        _ => break,
                    }
                }
            }
            after = Some(last);
        }
        // `list_sessions` skips deleted sessions, but the parent needs their heads too: a deletion
        // that landed and was not reported before the cut took every event up to its seq by request
        // (its `base`), and without the head those events would read as lost.
        for k in 0..SESSIONS {
            let s = engine.session(format!("k{k}")).expect("id");
            if let Some(head) = s.head().await.expect("head").filter(|h| h.is_deleted()) {
                writeln!(out, "head {} {} {}", s.id(), head.base().get(), head.last_seq().get()).expect("pipe");
            }
        }
    });
    writeln!(out, "done").expect("pipe");
    out.flush().expect("pipe");
    // Exit without dropping the engine: a clean close would flush memtables, which a power cut
    // never does, and the next round should start from what the cut left.
    std::process::exit(0);
}

/// What was acknowledged; `durable` is whether it was acknowledged in `sync` mode.
#[derive(Default)]
struct Expected {
    /// session -> seq -> (digest, durable).
    acked: BTreeMap<String, BTreeMap<u64, (String, bool)>>,
    /// session -> splice seq -> (upto, hash, durable).
    splices: BTreeMap<String, BTreeMap<u64, (u64, String, bool)>>,
}

impl Expected {
    fn record(&mut self, line: &str, durable: bool, round: u64) {
        let parts: Vec<&str> = line.split(' ').collect();
        match parts.as_slice() {
            ["ack", s, seq, d] => {
                let entry = (d.to_string(), durable);
                self.acked.entry(s.to_string()).or_default().insert(seq.parse().expect("seq"), entry);
            }
            ["splice", s, seq, upto, hash] => {
                let entry = (upto.parse().expect("upto"), hash.to_string(), durable);
                self.splices.entry(s.to_string()).or_default().insert(seq.parse().expect("seq"), entry);
            }
            ["del", s, seq] => {
                let seq: u64 = seq.parse().expect("seq");
                self.acked.entry(s.to_string()).or_default().retain(|k, _| *k > seq);
                self.splices.entry(s.to_string()).or_default().retain(|k, _| *k > seq);
            }
            _ => panic!("round {round}: bad line {line:?}"),
        }
    }
}

/// The verifier's dump.
#[derive(Default)]
struct Dump {
    heads: BTreeMap<String, (u64, u64)>,
    events: BTreeMap<(String, u64), String>,
    splices: BTreeMap<(String, u64), (u64, String)>,
}

fn verify(db: &Path, expected: &mut Expected, round: u64, why: &str) -> u64 {
    let lines = Child::spawn_verifier(&[(VERIFIER_ENV, db.display().to_string()), memtable_env()]).finish(round);
    let mut dump = Dump::default();
    let mut audited = false;
    for line in &lines {
        let parts: Vec<&str> = line.split(' ').collect();
        match parts.as_slice() {
            ["open-failed", ..] => panic!("round {round} ({why}): the database does not open: {line}"),
            ["audit-failed", ..] => panic!("round {round} ({why}): {line}"),
            ["audit-ok"] => audited = true,
            ["head", s, base, last] => {
                dump.heads.insert(s.to_string(), (base.parse().expect("base"), last.parse().expect("last")));
            }
            ["ev", s, seq, d] => {
                dump.events.insert((s.to_string(), seq.parse().expect("seq")), d.to_string());
            }
            ["sp", s, seq, upto, hash] => {
                let entry = (upto.parse().expect("upto"), hash.to_string());
                dump.splices.insert((s.to_string(), seq.parse().expect("seq")), entry);
            }
            ["done"] => {}
            _ => panic!("round {round}: bad verifier line {line:?}"),
        }
    }
    assert!(audited && lines.last().map(String::as_str) == Some("done"), "round {round}: verifier died: {lines:?}");
    let mut checked = 0;
    for (id, acked) in &mut expected.acked {
        // A deletion that landed but was not reported before the cut removed everything up to its
        // seq: those events are gone by request, not lost.
        let (base, last) = dump.heads.get(id).copied().unwrap_or((0, 0));
        acked.retain(|seq, (want, durable)| {
            if *seq <= base {
                return false;
            }
            let got = dump.events.get(&(id.clone(), *seq));
            if *durable || *seq <= last {
                assert_eq!(got, Some(&*want), "round {round} ({why}): acknowledged {id}#{seq} lost or changed");
                checked += 1;
                true
            } else {
                // A buffered write past what survived: lost, as `buffered` allows; the seq will be reused.
                false
            }
        });
    }
    for (id, splices) in &mut expected.splices {
        let (base, last) = dump.heads.get(id).copied().unwrap_or((0, 0));
        splices.retain(|seq, (upto, hash, durable)| {
            if *seq <= base || (!*durable && *seq > last) {
                return false;
            }
            let got = dump.splices.get(&(id.clone(), *seq));
            assert_eq!(got, Some(&(*upto, hash.clone())), "round {round} ({why}): reported splice {id}#{seq} lost");
            true
        });
    }
    checked
}

fn memtable_env() -> (&'static str, String) {
    (palimpsest::MEMTABLE_BYTES_ENV, TEST_MEMTABLE_BYTES.to_string())
}

fn parent() {
    let rounds = rounds(200);
    let seed0 = seed_from_clock();
    let clear_cache = std::env::var("PALIMPSEST_POWERLOSS_CUT").is_ok_and(|v| v == "clear-cache");
    if clear_cache {
        return reproduce_clear_cache(rounds, seed0);
    }
    println!("powerloss (engine): {rounds} cuts, seed {seed0}");
    let started = std::time::Instant::now();
    let rig = Rig::new();
    let mut rng = Rng(seed0);
    let mut generation = 0;
    let mut expected = Expected::default();
    let (mut checked, mut acks, mut torn, mut buffered, mut tables) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut splices, mut deletions, mut cuts_dropping, mut dropped_bytes) = (0u64, 0u64, 0u64, 0u64);
    for round in 0..rounds {
        if round > 0 && round % FRESH_DB_EVERY == 0 {
            generation = round;
            expected = Expected::default();
        }
        let db = rig.db(generation);
        let durable = round % 4 != 3;
        let mode = if durable { "sync" } else { "buffered" };
        let spec = format!("{}|{}|{mode}", db.display(), rng.next() % 1_000_000_007);
        let mut child = Child::spawn(&[(WRITER_ENV, spec), memtable_env()]);
        let cut_after = if rng.below(10) == 0 { 0 } else { 1 + rng.below(powerloss_common::MAX_LINES_BEFORE_CUT) };
        let mut lines = child.take(cut_after, round);
        let cut = cut_for(round, rng.next());
        let dropped = rig.cut_mid_work(cut, rng.below(powerloss_common::MAX_WRITES_BEFORE_CUT));
        cuts_dropping += u64::from(dropped.dirty_bytes > 0);
        dropped_bytes += dropped.dirty_bytes;
        lines.extend(child.kill());
        rig.mount.power_on();
        torn += u64::from(matches!(cut, powerloss::Cut::Torn { .. }));
        buffered += u64::from(!durable);
        for line in &lines {
            acks += u64::from(line.starts_with("ack "));
            splices += u64::from(line.starts_with("splice "));
            deletions += u64::from(line.starts_with("del "));
            expected.record(line, durable, round);
        }
        let why = format!("{mode}, {cut:?}, {} lines, seed {seed0}", lines.len());
        checked += verify(&db, &mut expected, round, &why);
        tables = tables.max(powerloss_common::table_files(&db));
    }
    println!(
        "powerloss (engine): {rounds} power cuts ({torn} torn, {buffered} in buffered mode, {cuts_dropping} dropping \
         unsynced data, {:.1} MB in all), {acks} acknowledged events, {splices} splices, {deletions} deletions, \
         {checked} checks of acknowledged events after the cuts, 0 lost, 0 failed opens or audits, up to {tables} \
         table files in a database, {:.0} s",
        dropped_bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    println!("powerloss (engine): {}", rig.model_summary());
    println!("test result: ok. 1 passed; 0 failed");
}

/// `PALIMPSEST_POWERLOSS_CUT=clear-cache` (module docs): LazyFS's procedure, tallied.
fn reproduce_clear_cache(rounds: u64, seed0: u64) {
    println!("powerloss (engine, clear-cache: NOT a power cut): {rounds} rounds, seed {seed0}");
    let rig = Rig::new();
    let mut rng = Rng(seed0);
    let (mut generation, mut expected) = (0, Expected::default());
    let mut findings: BTreeMap<String, u64> = BTreeMap::new();
    let (mut damaged, mut acks_after_clear) = (0u64, 0u64);
    // The findings are the point here: keep the default hook's backtrace noise off stderr.
    std::panic::set_hook(Box::new(|_| {}));
    for round in 0..rounds {
        let db = rig.db(generation);
        let spec = format!("{}|{}|sync", db.display(), rng.next() % 1_000_000_007);
        let mut child = Child::spawn(&[(WRITER_ENV, spec), memtable_env()]);
        let mut lines = child.take(1 + rng.below(powerloss_common::MAX_LINES_BEFORE_CUT), round);
        rig.cut_mid_work(Cut::ClearCache, rng.below(powerloss_common::MAX_WRITES_BEFORE_CUT));
        // The writer lives on after the cache is gone, as it did in the LazyFS runs.
        let after = child.take(1 + rng.below(powerloss_common::MAX_LINES_BEFORE_CUT), round);
        acks_after_clear += after.iter().filter(|l| l.starts_with("ack ")).count() as u64;
        lines.extend(after);
        lines.extend(child.kill());
        for line in &lines {
            expected.record(line, true, round);
        }
        let why = format!("clear-cache, {} lines, seed {seed0}", lines.len());
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| verify(&db, &mut expected, round, &why)));
        if let Err(panic) = outcome {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let finding = classify(&message);
            println!("round {round}: {finding}");
            *findings.entry(finding).or_default() += 1;
            damaged += 1;
            generation = round + 1;
            expected = Expected::default();
        }
    }
    println!(
        "powerloss (engine, clear-cache): {damaged} of {rounds} rounds left a damaged database or lost an \
         acknowledged event; {acks_after_clear} events were acknowledged after the cache was cleared"
    );
    for (finding, n) in &findings {
        println!("  {n:>4}  {finding}");
    }
}

/// The kind of damage a verifier panic describes: the audit's violation kinds, a failed open, or
/// an acknowledged event missing.
fn classify(message: &str) -> String {
    if message.contains("does not open") {
        let detail = message.split("open-failed").nth(1).unwrap_or(message);
        return format!("open failed:{}", detail.chars().take(120).collect::<String>());
    }
    if message.contains("audit-failed") {
        // The verifier prints the violations with `{:?}`: collect each `kind: Name`.
        let mut kinds: Vec<&str> = message
            .split("kind: ")
            .skip(1)
            .map(|rest| rest.split(|c: char| !c.is_alphanumeric()).next().unwrap_or(""))
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        if kinds.is_empty() {
            return format!("audit failed: {}", message.chars().take(160).collect::<String>());
        }
        return format!("audit failed: {}", kinds.join(", "));
    }
    if message.contains("lost or changed") || message.contains("splice") {
        return "an acknowledged event or splice lost (audit clean)".to_string();
    }
    format!("other: {}", message.chars().take(160).collect::<String>())
}
