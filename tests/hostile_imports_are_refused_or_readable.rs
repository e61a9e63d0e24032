//! A structured generator of hostile exported-event files: random kinds, seqs near 0, near
//! `Seq::MAX` and near `u64::MAX`, splice and memory spans backwards and forwards, episodes at the
//! limits, deletions anywhere, tool results for calls that never were. Each of 10,000 small files is
//! either refused with `InvalidImport` naming one of its lines (and changes nothing), or imported and
//! then readable at every seq it added (history, working memory now and as of each seq, export)
//! and audit-clean; one imported whole also round-trips through export into another database.
//! Nothing panics.

mod backends;
mod common;

use backends::Store;
use common::Rng;
use palimpsest::{AuditOptions, Components, Durability, Engine, Error, Head, Message, Seq, Session};
use serde_json::{Value, json};

/// Files tried; each is at most `MAX_LINES` lines, so the whole run takes seconds.
const FILES: usize = 10_000;
/// Files tried on JetStream, where every import and every check reads over the network (as
/// properties run a tenth of their cases on a cluster).
const FILES_ON_NATS: usize = 1_000;
const MAX_LINES: u64 = 6;
/// Sessions that already have events, which some files are imported into.
const LIVE_SESSIONS: usize = 4;

/// The numbers hostile files like: the edges of every range a rule guards.
fn edge(rng: &mut Rng, near: u64) -> u64 {
    let max = Seq::MAX.get();
    let pool = [
        0,
        1,
        2,
        near.saturating_sub(1),
        near,
        near.saturating_add(1),
        max - (1 << 32),
        max - (1 << 32) + 1,
        max - 1,
        max,
        max + 1,
        u64::MAX - 1,
        u64::MAX,
        rng.below(1_000),
    ];
    pool[rng.below(pool.len() as u64) as usize]
}

/// Plausible most of the time, an edge otherwise: half the files should get far enough to meet
/// the rules that need the head and the replay.
fn near_or_edge(rng: &mut Rng, plausible: u64) -> u64 {
    if rng.below(3) == 0 { edge(rng, plausible) } else { plausible }
}

/// What the generator tracks of the log it is writing, so lines can be plausible.
struct Draft {
    next_seq: u64,
    lower: u64,
    episode: u64,
    open_calls: Vec<String>,
    n_calls: u64,
}

fn line(rng: &mut Rng, draft: &mut Draft, idx: u64) -> Value {
    let seq = draft.next_seq;
    // A quarter of the files for empty sessions open with a deletion, which may move the log anywhere.
    let kind = if idx == 0 && seq == 1 && rng.below(4) == 0 { 15 } else { rng.below(16) };
    let mut obj = match kind {
        0..=4 => json!({ "role": "user", "content": format!("line {idx}") }),
        5..=6 => json!({ "role": "assistant", "content": "ok" }),
        7 => {
            draft.n_calls += 1;
            let id = format!("c{}", draft.n_calls);
            draft.open_calls.push(id.clone());
            json!({ "role": "assistant", "content": null,
                    "tool_calls": [{ "id": id, "type": "function", "function": { "name": "run", "arguments": "{}" } }] })
        }
        8 => {
            let id = match (draft.open_calls.pop(), rng.below(4)) {
                (Some(id), 0..=2) => id,
                _ => format!("stray{}", rng.below(3)),
            };
            json!({ "role": "tool", "tool_call_id": id, "content": "done" })
        }
        9..=10 => {
            let upto = near_or_edge(rng, seq.saturating_sub(1));
            let previous = near_or_edge(rng, draft.lower);
            json!({ "type": "compaction_spliced", "upto": upto, "previous_upto": previous,
                    "summary": format!("summary {}", rng.below(5)), "n_messages": rng.below(10) })
        }
        11..=12 => {
            let episode = near_or_edge(rng, draft.episode);
            json!({ "type": "episode_boundary", "episode": episode, "reason": "explicit" })
        }
        13..=14 => {
            let (from, upto) = if rng.below(2) == 0 {
                (near_or_edge(rng, draft.lower), near_or_edge(rng, seq.saturating_sub(1)))
            } else {
                (edge(rng, seq), edge(rng, seq))
            };
            let namespace = ["ns", "", "a b", "alice"][rng.below(4) as usize];
            json!({ "type": "memories_extracted", "namespace": namespace, "from": from, "upto": upto, "n_memories": 1 })
        }
        _ => json!({ "type": "session_deleted", "n_events_removed": rng.below(3) }),
    };
    let is_deletion = obj["type"] == "session_deleted";
    // The seq: absent, the one the line would get, or an edge (a deletion may move the log there).
    let top = Seq::MAX.get() - palimpsest::IMPORT_HEADROOM_EVENTS;
    let starts = [2, 1_000, (1 << 32) + 1, top - MAX_LINES, top - 1, top, top + 1, Seq::MAX.get(), u64::MAX];
    let given = match rng.below(4) {
        _ if is_deletion && idx == 0 && rng.below(2) == 0 => Some(starts[rng.below(starts.len() as u64) as usize]),
        0 => None,
        1 | 2 => Some(seq),
        _ => Some(edge(rng, seq)),
    };
    if let Some(given) = given {
        obj["seq"] = json!(given);
        if is_deletion && idx == 0 {
            draft.next_seq = given;
        }
    }
    if rng.below(4) == 0 {
        obj["at_ms"] = json!([0, 1, u64::MAX, rng.next()][rng.below(4) as usize]);
    }
    let seq = draft.next_seq;
    match obj["type"].as_str() {
        Some("compaction_spliced") => draft.lower = draft.lower.max(obj["upto"].as_u64().unwrap_or(0)),
        Some("episode_boundary") => draft.episode += 1,
        Some("session_deleted") => {
            draft.lower = seq;
            draft.episode = 0;
            draft.open_calls.clear();
        }
        _ => {}
    }
    draft.next_seq = seq.saturating_add(1);
    obj
}

/// A file for a session whose head is `head` (or an empty one), as text, with its line count.
fn file(rng: &mut Rng, head: Option<&Head>) -> (String, usize) {
    let mut draft = Draft {
        next_seq: head.map_or(1, |h| h.last_seq().get() + 1),
        lower: head.map_or(0, |h| h.upto().max(h.base()).get()),
        episode: head.map_or(0, Head::episode),
        open_calls: head.map_or_else(Vec::new, |h| h.open_calls().iter().map(|c| c.id.clone()).collect()),
        n_calls: 1_000 + rng.below(1_000),
    };
    let n = rng.below(MAX_LINES) + 1;
    let mut text = String::new();
    for idx in 0..n {
        let value = line(rng, &mut draft, idx);
        // Now and then a value of the wrong type or sign where a number belongs.
        let raw = if rng.below(40) == 0 {
            value.to_string().replacen(':', ":-", 1).replacen("\"seq\":", "\"seq\":1.5,\"x\":", 1)
        } else {
            value.to_string()
        };
        text.push_str(&raw);
        text.push('\n');
    }
    (text, n as usize)
}

/// Every seq the import added reads back; working memory is served now and as of each of them.
/// A session imported whole is exported and imported into `copies`, and comes back the same.
async fn readable(s: &Session, engine: &Engine, after: Seq, copies: Option<&Engine>) {
    let head = s.head().await.expect("head").expect("an imported session has a head");
    let first = after.max(head.base()).get() + 1;
    for seq in first..=head.last_seq().get() {
        let events = s.history(Seq::new(seq), 1).await.expect("history");
        assert_eq!(events.first().map(|e| e.seq), Some(Seq::new(seq)), "seq {seq} reads back");
        let at = s.working_memory_at(Seq::new(seq), 8).await;
        match (&at, head.is_deleted()) {
            (Ok(wm), false) => assert!(wm.last_seq == Seq::new(seq)),
            (Err(Error::NotFound { .. }), true) => {}
            other => panic!("working memory at {seq}: {other:?}"),
        }
    }
    assert_eq!(s.working_memory(8).await.is_ok(), !head.is_deleted());
    let mut file = Vec::new();
    s.export_jsonl(&mut file).await.expect("an imported session exports");
    if let Some(copies) = copies {
        let copy = copies.session(s.id().clone()).expect("id");
        let text = String::from_utf8(file).expect("utf-8");
        copy.import_jsonl(&text).await.unwrap_or_else(|e| panic!("re-import: {e}\n{text}"));
        assert_eq!(common::snapshot(s).await, common::snapshot(&copy).await, "{text}");
    }
    let report = engine.audit_async(AuditOptions { session: Some(s.id().clone()) }, |_| {}).await.expect("audit");
    assert!(report.ok, "{:?}", report.violations);
}

async fn open(store: &Store) -> Engine {
    store
        .open_with(Components::default(), |config| {
            config.durability = Durability::Buffered;
            config.extraction.enabled = false;
        })
        .await
}

async fn hostile_import_files_are_refused_with_their_line_or_imported_readable_and_clean(store: Store) {
    let copies_store = store.sibling().await;
    let (engine, copies) = (open(&store).await, open(&copies_store).await);
    let files = if store.is_nats() { FILES_ON_NATS } else { FILES };
    let live: Vec<Session> = (0..LIVE_SESSIONS).map(|i| engine.session(format!("live-{i}")).expect("id")).collect();
    for (i, s) in live.iter().enumerate() {
        s.append_many(common::turn(i)).await.expect("seed");
    }
    let mut rng = Rng(0x5eed_0010);
    let (mut accepted, mut refused, mut high) = (0u64, 0u64, 0u64);
    for i in 0..files {
        let s = if rng.below(5) == 0 {
            live[rng.below(LIVE_SESSIONS as u64) as usize].clone()
        } else {
            engine.session(format!("h-{i}")).expect("id")
        };
        let before = s.head().await.expect("head");
        let (text, n_lines) = file(&mut rng, before.as_ref());
        match s.import_jsonl(&text).await {
            Ok(report) => {
                accepted += 1;
                high += u64::from(report.last_seq.get() > 1 << 32);
                let whole = before.is_none().then_some(&copies);
                readable(&s, &engine, before.as_ref().map_or(Seq::ZERO, Head::last_seq), whole).await;
            }
            Err(Error::InvalidImport { line, .. }) => {
                refused += 1;
                assert!((1..=n_lines).contains(&line), "line {line} of {n_lines}:\n{text}");
                assert_eq!(s.head().await.expect("head"), before, "a refused import changes nothing:\n{text}");
            }
            Err(e) => panic!("{e}\n{text}"),
        }
        // Live sessions keep taking appends whatever was imported into them.
        if before.is_some() && rng.below(8) == 0 {
            s.append(Message::user("still writable")).await.expect("append after an import");
        }
    }
    let report = engine.audit_async(AuditOptions::default(), |_| {}).await.expect("audit");
    assert!(report.ok, "{:?}", report.violations);
    println!(
        "hostile imports on {}: {files} files, {accepted} imported and readable ({high} of them at seqs past 2^32), \
         {refused} refused with their line",
        store.name()
    );
    assert!(accepted >= files as u64 / 10 && refused >= files as u64 / 10, "{accepted} accepted, {refused} refused");
}

on_both_backends!(hostile_import_files_are_refused_with_their_line_or_imported_readable_and_clean);
