//! p8: how opening a database grows with the data, and what part of it fjall's own open is. Each
//! open runs in a child process (this binary re-executed with the hidden `open-probe`
//! subcommand), so nothing of the parent's caches or threads is shared, and times only the
//! successful open: the engine's `Engine::open` (inside a tokio runtime, as a server opens it), or
//! raw fjall opening the same directory with the same seven keyspaces and options. Every database
//! measured here was closed cleanly (a clean close flushes the memtables, so nothing is replayed).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use palimpsest::{Config, Engine, Error};
use serde_json::{Value, json};

use crate::Plan;
use crate::raw::RawDb;
use crate::stats::{median, paired_ratio, round};
use crate::workload::{CACHE_MB, log};

/// Name of the hidden subcommand the parent runs in a child.
pub const PROBE_COMMAND: &str = "open-probe";

/// Which open a probe times.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Side {
    /// `Engine::open` with the bench's configuration.
    Engine,
    /// fjall's `Database` open plus the engine's seven keyspaces, same options, same files.
    Raw,
}

/// The child's side: time one open of `db` and print `{"open_ms": ...}`.
pub fn probe(db: &Path, side: Side) {
    let runtime = crate::runtime();
    let _entered = runtime.enter();
    let open_ms = match side {
        Side::Engine => {
            let mut config = Config::new(db);
            config.cache_mb = CACHE_MB;
            let mut attempts = 0;
            loop {
                let start = Instant::now();
                match Engine::open(config.clone()) {
                    Ok(engine) => {
                        let ms = start.elapsed().as_secs_f64() * 1e3;
                        drop(engine);
                        break ms;
                    }
                    // A database closed a moment ago may still be releasing its lock.
                    Err(Error::Locked { .. }) if attempts < 200 => {
                        attempts += 1;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => panic!("opening the engine at {} failed: {e}", db.display()),
                }
            }
        }
        Side::Raw => RawDb::open_timed(db, CACHE_MB << 20).1,
    };
    println!("{}", json!({ "open_ms": open_ms }));
}

/// Runs one probe child and returns its open time in milliseconds.
fn open_ms(db: &Path, side: Side) -> f64 {
    let exe: PathBuf = std::env::current_exe().expect("the path of this binary");
    let side_arg = match side {
        Side::Engine => "engine",
        Side::Raw => "raw",
    };
    let output = Command::new(exe)
        .arg(PROBE_COMMAND)
        .arg("--db")
        .arg(db)
        .arg("--side")
        .arg(side_arg)
        .output()
        .expect("running the open probe");
    assert!(output.status.success(), "the open probe failed: {}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).expect("the open probe prints one JSON object");
    report["open_ms"].as_f64().expect("the open probe reports open_ms")
}

/// The databases p8 opens, all closed.
pub struct Databases<'a> {
    /// One session of `big_messages` messages.
    pub big: &'a Path,
    /// Messages in `big`.
    pub big_messages: u64,
    /// One session of 100 messages.
    pub small: &'a Path,
    /// Many sessions of 100 messages (reported for information).
    pub many: Option<&'a Path>,
}

/// p8: per repeat, the engine's open of the big database, fjall's open of the same files (the
/// order of these two alternates), and the engine's open of the small one.
pub fn open_ratios(plan: &Plan, dbs: &Databases<'_>) -> Value {
    let (mut big, mut raw, mut small, mut many) = (vec![], vec![], vec![], vec![]);
    for repeat in 0..plan.repeats {
        if repeat % 2 == 0 {
            big.push(open_ms(dbs.big, Side::Engine));
            raw.push(open_ms(dbs.big, Side::Raw));
        } else {
            raw.push(open_ms(dbs.big, Side::Raw));
            big.push(open_ms(dbs.big, Side::Engine));
        }
        small.push(open_ms(dbs.small, Side::Engine));
        if let Some(path) = dbs.many {
            many.push(open_ms(path, Side::Engine));
        }
        log(format!(
            "p8 repeat {repeat}: engine open {:.1} ms at {} messages, raw fjall {:.1} ms; engine {:.1} ms at 100{}",
            big[repeat],
            dbs.big_messages,
            raw[repeat],
            small[repeat],
            many.last().map_or(String::new(), |ms| format!("; {ms:.1} ms with many sessions")),
        ));
    }
    let mut out = json!({
        "p8_open_growth": round(paired_ratio(&big, &small), 3),
        "p8_open_vs_raw": round(paired_ratio(&big, &raw), 3),
        "p8_open_ms_large": round(median(&big), 2),
        "p8_open_ms_small": round(median(&small), 2),
        "p8_raw_open_ms_large": round(median(&raw), 2),
        "p8_large_messages": dbs.big_messages,
    });
    if !many.is_empty() {
        out["p8_open_ms_many_sessions"] = json!(round(median(&many), 2));
    }
    out
}
