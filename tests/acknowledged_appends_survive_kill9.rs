//! Kill -9 harness for the write path. A child process appends to several sessions with `sync`
//! durability and reports each acknowledged event (session, seq, content digest) on a pipe. The
//! parent SIGKILLs it after a random number of acknowledgements (sometimes zero, so some kills land
//! during open and journal recovery), reopens the database, and checks that every acknowledged
//! event is present with the same content, every session is a dense prefix 1..=last, and the stored
//! head equals a replay of the log. The database carries over from round to round.
//!
//! `harness = false`: the binary is both parent and child (the child is chosen by an env var).
//! Rounds default to 40; set `PALIMPSEST_KILL9_ROUNDS` for longer soaks.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::Rng;
use palimpsest::{Config, Durability, Engine, Message, Seq, ToolCall, replay};

const CHILD_ENV: &str = "PALIMPSEST_KILL9_CHILD";
const SESSIONS: u64 = 8;

fn main() {
    match std::env::var(CHILD_ENV) {
        Ok(spec) => child(&spec),
        Err(_) => parent(),
    }
}

fn digest(text: &str) -> String {
    blake3::hash(text.as_bytes()).to_hex()[..16].to_string()
}

fn open(dir: &Path) -> Engine {
    let mut config = Config::new(dir);
    config.durability = Durability::Sync;
    Engine::open(config).expect("open")
}

/// Appends forever, printing `ack <session> <seq> <digest>` after each acknowledged event.
fn child(spec: &str) {
    let (dir, seed) = spec.split_once('|').expect("spec is dir|seed");
    let mut rng = Rng(seed.parse().expect("seed"));
    let engine = open(Path::new(dir));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut out = std::io::stdout().lock();
    runtime.block_on(async {
        for n in 0u64.. {
            let s = engine.session(format!("k{}", rng.below(SESSIONS))).expect("id");
            let batch = if rng.below(3) == 0 {
                let id = format!("call-{seed}-{n}");
                vec![
                    Message::assistant_tool_calls("", vec![ToolCall::new(&id, "grep", format!("{{\"n\":{n}}}"))]),
                    Message::tool_result(&id, format!("found {n}")),
                ]
            } else {
                vec![Message::user(format!("message {n} from seed {seed}"))]
            };
            let digests: Vec<String> = batch.iter().map(|m| digest(&m.content)).collect();
            let seqs = s.append_many(batch).await.expect("append");
            for (seq, d) in (seqs.start.get()..seqs.end.get()).zip(digests) {
                writeln!(out, "ack {} {seq} {d}", s.id()).expect("pipe");
            }
            out.flush().expect("pipe");
        }
    });
}

fn parent() {
    let rounds: u64 = std::env::var("PALIMPSEST_KILL9_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(40);
    let seed0 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos() as u64;
    println!("kill9: {rounds} rounds, seed {seed0}");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("db");
    let mut rng = Rng(seed0);
    // session -> seq -> digest of every acknowledged event, across all rounds.
    let mut acked: BTreeMap<String, BTreeMap<u64, String>> = BTreeMap::new();
    let mut kills_during_open = 0;
    for round in 0..rounds {
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .env(CHILD_ENV, format!("{}|{}", db.display(), rng.next() % 1_000_000_007))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
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
        let kill_after = if rng.below(4) == 0 { 0 } else { rng.below(150) };
        if kill_after == 0 {
            kills_during_open += 1;
        }
        let mut lines = Vec::new();
        while (lines.len() as u64) < kill_after {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => lines.push(line),
                Err(e) => panic!("round {round}: child stopped acknowledging: {e:?}"),
            }
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        reader.join().expect("reader");
        // Lines fully written before the kill were acknowledged too.
        lines.extend(rx.try_iter());
        for line in &lines {
            let parts: Vec<&str> = line.split(' ').collect();
            assert!(parts.len() == 4 && parts[0] == "ack", "round {round}: bad line {line:?}");
            acked.entry(parts[1].to_string()).or_default().insert(parts[2].parse().expect("seq"), parts[3].to_string());
        }
        verify(&db, &acked, round);
    }
    let total: usize = acked.values().map(BTreeMap::len).sum();
    println!("kill9: {rounds} kills ({kills_during_open} during open), {total} acknowledged events all intact");
    println!("test result: ok. 1 passed; 0 failed");
}

fn verify(db: &Path, acked: &BTreeMap<String, BTreeMap<u64, String>>, round: u64) {
    let engine = open(db);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        for id in engine.list_sessions(None, 100).expect("list") {
            let s = engine.session(id.clone()).expect("id");
            let head = s.head().await.expect("head").expect("listed sessions have heads");
            let history = s.history(Seq::new(1), 10_000).await.expect("history");
            let seqs: Vec<u64> = history.iter().map(|e| e.seq.get()).collect();
            assert_eq!(seqs, (1..=head.last_seq().get()).collect::<Vec<_>>(), "round {round}: {id} is not dense");
            assert_eq!(replay(&history), head, "round {round}: {id} head disagrees with its log");
            for (seq, want) in acked.get(id.as_str()).into_iter().flatten() {
                let event = history.get(*seq as usize - 1).unwrap_or_else(|| panic!("round {round}: {id}#{seq} lost"));
                let got = digest(&event.message().expect("message").content);
                assert_eq!(&got, want, "round {round}: {id}#{seq} changed");
            }
        }
        for (id, seqs) in acked {
            let head = engine.session(id.as_str()).expect("id").head().await.expect("head");
            let last = head.map_or(0, |h| h.last_seq().get());
            assert!(seqs.keys().all(|s| *s <= last), "round {round}: acknowledged events of {id} lost");
        }
    });
}
