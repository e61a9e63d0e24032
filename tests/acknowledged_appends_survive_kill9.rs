//! Crash harness (kill -9). A child process runs a mixed workload on 16 sessions - user turns,
//! tool calls answered later, compactions in the background with a summarizer that takes a
//! while, the odd deletion - and reports on a pipe every acknowledged event (session, seq,
//! digest), every completed splice and every deletion. The parent kills it with SIGKILL after a
//! random number of reports (sometimes none, so kills land during open and journal recovery), or
//! lets it abort itself at a named kill point (feature `testing`: before a batch is written,
//! between write and fsync, after the commit, after the summary blob is stored, before and after
//! the splice). Rounds alternate between `buffered` and `sync` durability on one database, which
//! carries over from round to round. After each death the parent reopens and checks: every
//! acknowledged event is present byte for byte, every reported splice is there, every session
//! is a dense log, and the audit (density, heads equal to the replay, splices forward and
//! pair-safe, blobs present) is clean. Every 25th round starts on a fresh database, so kills at
//! start-up also land while a database is being created.
//!
//! For `buffered` the promise is surviving process death, not power loss; this harness kills
//! processes, so it holds both modes to the same check.
//!
//! `harness = false`: the binary is both parent and child (chosen by an env var).
//! `PALIMPSEST_KILL9_ROUNDS` sets the number of rounds (default 200), for longer soaks.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use common::{FnSummarizer, Rng};
use palimpsest::{
    AuditOptions, CompactionOutcome, CompactionRequest, Config, Durability, Engine, EventKind, KILL_AFTER_ENV,
    KILL_AT_ENV, KILL_POINTS, Message, Seq, ToolCall,
};

const CHILD_ENV: &str = "PALIMPSEST_KILL9_CHILD";
const SESSIONS: u64 = 16;

fn main() {
    match std::env::var(CHILD_ENV) {
        Ok(spec) => child(&spec),
        Err(_) => parent(),
    }
}

fn digest(text: &str) -> String {
    blake3::hash(text.as_bytes()).to_hex()[..16].to_string()
}

fn open(dir: &Path, durability: Durability, summarizer: Arc<FnSummarizer>) -> Engine {
    let mut config = Config::new(dir);
    config.durability = durability;
    config.compaction.keep_last_messages = 4;
    Engine::open_with_summarizer(config, summarizer).expect("open")
}

/// The workload. Prints `ack S SEQ DIGEST`, `splice S SEQ UPTO HASH`, `del S SEQ`.
fn child(spec: &str) {
    let parts: Vec<&str> = spec.split('|').collect();
    let (dir, seed, durability) = (parts[0], parts[1].parse::<u64>().expect("seed"), parts[2]);
    let durability = if durability == "sync" { Durability::Sync } else { Durability::Buffered };
    let slow = FnSummarizer::new(|input| {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(5 + input.messages.len() as u64 % 20)).await;
            Ok(format!("summary of {} messages", input.messages.len()))
        })
    });
    let engine = open(Path::new(dir), durability, slow);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let out = Arc::new(parking_lot::Mutex::new(std::io::stdout()));
    let say = {
        let out = Arc::clone(&out);
        move |line: String| {
            let mut out = out.lock();
            writeln!(out, "{line}").expect("pipe");
            out.flush().expect("pipe");
        }
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
            let message = match rng.below(10) {
                0..=3 => Message::user(format!("message {n} of seed {seed}")),
                4 | 5 => {
                    let id = format!("c{seed}-{n}");
                    calls.push(id.clone());
                    Message::assistant_tool_calls("", vec![ToolCall::new(id, "grep", format!("{{\"n\":{n}}}"))])
                }
                6 | 7 if !calls.is_empty() => {
                    let id = calls.remove(rng.below(calls.len() as u64) as usize);
                    Message::tool_result(id, format!("result {n}"))
                }
                8 => {
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
                9 if rng.below(20) == 0 => {
                    if let Ok(seq) = s.delete().await {
                        calls.clear();
                        say(format!("del {} {seq}", s.id()));
                    }
                    continue;
                }
                _ => Message::assistant(format!("answer {n}")),
            };
            let d = digest(&message.content);
            let seq = s.append(message).await.expect("append");
            say(format!("ack {} {seq} {d}", s.id()));
        }
    });
}

#[derive(Default)]
struct Expected {
    /// session -> seq -> content digest.
    acked: BTreeMap<String, BTreeMap<u64, String>>,
    /// session -> splice seq -> (upto, hash).
    splices: BTreeMap<String, BTreeMap<u64, (u64, String)>>,
}

impl Expected {
    fn record(&mut self, line: &str, round: u64) {
        let parts: Vec<&str> = line.split(' ').collect();
        match parts.as_slice() {
            ["ack", s, seq, d] => {
                self.acked.entry(s.to_string()).or_default().insert(seq.parse().expect("seq"), d.to_string());
            }
            ["splice", s, seq, upto, hash] => {
                let entry = (upto.parse().expect("upto"), hash.to_string());
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

fn parent() {
    let rounds: u64 = std::env::var("PALIMPSEST_KILL9_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(200);
    let seed0 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos() as u64;
    println!("kill9: {rounds} rounds, seed {seed0}");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut db = dir.path().join("db-0");
    let mut rng = Rng(seed0);
    let mut expected = Expected::default();
    let (mut during_open, mut at_kill_points, mut sigkills) = (0, 0, 0);
    let (mut earlier_acked, mut earlier_splices) = (0, 0);
    for round in 0..rounds {
        // Every 25th round starts a fresh database, so start-up kills also land while the database
        // is being created, not only while it is recovered.
        if round > 0 && round % 25 == 0 {
            db = dir.path().join(format!("db-{round}"));
            earlier_acked += expected.acked.values().map(BTreeMap::len).sum::<usize>();
            earlier_splices += expected.splices.values().map(BTreeMap::len).sum::<usize>();
            expected = Expected::default();
        }
        let durability = if round % 2 == 0 { "sync" } else { "buffered" };
        let mut command = Command::new(std::env::current_exe().expect("exe"));
        command.env(CHILD_ENV, format!("{}|{}|{durability}", db.display(), rng.next() % 1_000_000_007));
        let kill_point = (rng.below(2) == 0).then(|| KILL_POINTS[rng.below(KILL_POINTS.len() as u64) as usize]);
        if let Some(point) = kill_point {
            command.env(KILL_AT_ENV, point).env(KILL_AFTER_ENV, (1 + rng.below(30)).to_string());
        }
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn child");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let kill_after = if rng.below(8) == 0 { 0 } else { 1 + rng.below(120) };
        let mut lines = Vec::new();
        let mut died_by_itself = false;
        while (lines.len() as u64) < kill_after {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => lines.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    died_by_itself = true;
                    break;
                }
                Err(e) => panic!("round {round}: child stopped reporting: {e:?}"),
            }
        }
        if died_by_itself {
            at_kill_points += 1;
        } else if kill_after == 0 {
            during_open += 1;
        } else {
            sigkills += 1;
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        reader.join().expect("reader");
        // Lines fully written before the death were acknowledged too.
        lines.extend(rx.try_iter());
        for line in &lines {
            expected.record(line, round);
        }
        verify(&db, &expected, round);
    }
    let n_acked = earlier_acked + expected.acked.values().map(BTreeMap::len).sum::<usize>();
    let n_splices = earlier_splices + expected.splices.values().map(BTreeMap::len).sum::<usize>();
    println!(
        "kill9: {rounds} deaths ({sigkills} SIGKILL mid-workload, {during_open} SIGKILL at start-up, \
         {at_kill_points} at kill points); {n_acked} acknowledged events and {n_splices} splices intact"
    );
    println!("test result: ok. 1 passed; 0 failed");
}

fn verify(db: &Path, expected: &Expected, round: u64) {
    let engine = open(db, Durability::Buffered, FnSummarizer::constant("unused"));
    let report = engine.audit(&AuditOptions::default(), &mut |_| {}).expect("audit runs");
    assert!(report.ok, "round {round}: audit found {:?}", report.violations);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        for (id, acked) in &expected.acked {
            let s = engine.session(id.as_str()).expect("id");
            // A deletion that landed but was not reported before the death removed everything up
            // to its seq: those events are gone by request, not lost.
            let base = s.head().await.expect("head").map_or(0, |h| h.base().get());
            for (seq, want) in acked.range(base + 1..) {
                let events = s.history(Seq::new(*seq), 1).await.expect("history");
                let got = events.first().and_then(|e| e.message()).map(|m| digest(&m.content));
                assert_eq!(got.as_ref(), Some(want), "round {round}: acknowledged {id}#{seq} lost or changed");
            }
        }
        for (id, splices) in &expected.splices {
            let s = engine.session(id.as_str()).expect("id");
            let base = s.head().await.expect("head").map_or(0, |h| h.base().get());
            for (seq, (upto, hash)) in splices.range(base + 1..) {
                let events = s.history(Seq::new(*seq), 1).await.expect("history");
                match events.first().map(|e| &e.kind) {
                    Some(EventKind::CompactionSpliced(sp)) => {
                        assert_eq!((sp.upto.get(), sp.summary_hash.to_hex()), (*upto, hash.clone()), "round {round}");
                    }
                    other => panic!("round {round}: reported splice {id}#{seq} is {other:?}"),
                }
            }
        }
    });
}
