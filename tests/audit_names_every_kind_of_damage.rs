//! Databases damaged in each way audit must notice: the damage is written with raw fjall, under
//! the engine's documented key layout and encoding (SPEC.md sections 2 and 3), and audit must name
//! it with the right kind, session and seq, and never panic. Rebuild repairs what it can.

mod common;

use common::{FnSummarizer, engine_with, turn};
use palimpsest::{
    AuditOptions, AuditReport, CompactionOutcome, CompactionRequest, Config, Durability, Engine, Event, EventKind,
    Message, Seq, Splice, SummaryHash, ToolCall, ViolationKind,
};

/// The stored form of an event (SPEC.md section 3): format byte 1, then compact msgpack.
fn encode(event: &Event) -> Vec<u8> {
    let mut out = vec![1u8];
    out.extend(rmp_serde::to_vec(event).expect("encodes"));
    out
}

fn event_key(session: &str, seq: u64) -> Vec<u8> {
    let mut key = session.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// A healthy database: two sessions with tool calls, one compacted. Returns the dir.
async fn healthy() -> tempfile::TempDir {
    let (engine, dir) = engine_with(FnSummarizer::constant("the summary"), |c| c.compaction.keep_last_messages = 4);
    for id in ["alpha", "beta"] {
        let s = engine.session(id).unwrap();
        for i in 0..3 {
            s.append_many(turn(i)).await.unwrap();
        }
    }
    let outcome = engine.session("alpha").unwrap().compact(CompactionRequest::default()).await.unwrap();
    assert!(matches!(outcome, CompactionOutcome::Spliced { upto, .. } if upto == Seq::new(8)), "{outcome:?}");
    let report = engine.audit(&AuditOptions::default(), &mut |_| {}).unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!((report.sessions, report.events, report.splices), (2, 25, 1));
    dir
}

/// Opens the raw fjall database, applies `damage`, closes it.
fn with_raw(dir: &tempfile::TempDir, damage: impl FnOnce(&fjall::Database, &dyn Fn(&str) -> fjall::Keyspace)) {
    let db = fjall::Database::builder(dir.path().join("db")).open().expect("raw open");
    let ks = |name: &str| db.keyspace(name, fjall::KeyspaceCreateOptions::default).expect("keyspace");
    damage(&db, &ks);
    db.persist(fjall::PersistMode::SyncAll).expect("persist");
}

fn audit(dir: &tempfile::TempDir) -> (Engine, AuditReport) {
    let mut config = Config::new(dir.path().join("db"));
    config.durability = Durability::Buffered;
    let engine = Engine::open(config).expect("open damaged db");
    let report = engine.audit(&AuditOptions::default(), &mut |_| {}).expect("audit runs");
    (engine, report)
}

fn found(report: &AuditReport, kind: ViolationKind, session: &str, seq: Option<u64>) -> bool {
    report.violations.iter().any(|v| v.kind == kind && v.session.as_deref() == Some(session) && v.seq == seq)
}

#[tokio::test]
async fn a_flipped_byte_in_an_event_is_named_with_session_and_seq() {
    let dir = healthy().await;
    with_raw(&dir, |_, ks| {
        let events = ks("events");
        let key = event_key("beta", 5);
        let mut value = events.get(&key).unwrap().unwrap().to_vec();
        value[1] ^= 0xff; // the msgpack array marker
        events.insert(key, value).unwrap();
    });
    let (_, report) = audit(&dir);
    assert!(!report.ok);
    assert!(found(&report, ViolationKind::Undecodable, "beta", Some(5)), "{:?}", report.violations);
    // The damaged event no longer folds, so the stored head disagrees too; no gap is reported.
    assert!(!report.violations.iter().any(|v| v.kind == ViolationKind::SeqGap), "{:?}", report.violations);
}

#[tokio::test]
async fn a_missing_blob_is_named_at_its_splice() {
    let dir = healthy().await;
    with_raw(&dir, |_, ks| ks("blobs").remove(SummaryHash::of("the summary").as_bytes().to_vec()).unwrap());
    let (_, report) = audit(&dir);
    assert!(found(&report, ViolationKind::MissingBlob, "alpha", Some(13)), "{:?}", report.violations);
    assert_eq!(report.violations.len(), 1, "{:?}", report.violations);
}

#[tokio::test]
async fn a_blob_that_does_not_hash_to_its_key_is_named() {
    let dir = healthy().await;
    with_raw(&dir, |_, ks| ks("blobs").insert(SummaryHash::of("the summary").as_bytes().to_vec(), "tampered").unwrap());
    let (_, report) = audit(&dir);
    assert!(found(&report, ViolationKind::BlobHashMismatch, "alpha", Some(13)), "{:?}", report.violations);
}

#[tokio::test]
async fn a_head_that_disagrees_with_the_log_is_named_and_rebuild_repairs_it() {
    let dir = healthy().await;
    with_raw(&dir, |_, ks| {
        let heads = ks("heads");
        let beta = heads.get("beta").unwrap().unwrap();
        heads.insert("alpha", beta).unwrap();
    });
    let (engine, report) = audit(&dir);
    assert!(found(&report, ViolationKind::HeadMismatch, "alpha", None), "{:?}", report.violations);
    let rebuilt = engine.rebuild(None).await.unwrap();
    assert_eq!((rebuilt.sessions, rebuilt.heads_rewritten), (2, 1));
    assert!(engine.audit(&AuditOptions::default(), &mut |_| {}).unwrap().ok);
}

#[tokio::test]
async fn a_splice_crafted_to_cut_a_tool_pair_is_named() {
    let dir = healthy().await;
    // beta: 1 user, 2 call, 3 result, 4 answer, ... Append a splice at 13 up to 2: call 2's result is at 3.
    with_raw(&dir, |_, ks| {
        let splice = Splice {
            upto: Seq::new(2),
            previous_upto: Seq::ZERO,
            summary_hash: SummaryHash::of("the summary"),
            n_messages: 2,
            summary_bytes: 11,
            summarizer: "crafted".into(),
        };
        let event = Event { seq: Seq::new(13), at_ms: 0, kind: EventKind::CompactionSpliced(splice) };
        ks("events").insert(event_key("beta", 13), encode(&event)).unwrap();
        ks("splices").insert(event_key("beta", 13), "").unwrap();
    });
    let (_, report) = audit(&dir);
    assert!(found(&report, ViolationKind::SpliceCutsToolPair, "beta", Some(13)), "{:?}", report.violations);
    assert!(found(&report, ViolationKind::HeadMismatch, "beta", None), "{:?}", report.violations);
}

#[tokio::test]
async fn a_gap_in_seqs_is_named_where_it_is_noticed() {
    let dir = healthy().await;
    with_raw(&dir, |_, ks| ks("events").remove(event_key("beta", 6)).unwrap());
    let (_, report) = audit(&dir);
    assert!(found(&report, ViolationKind::SeqGap, "beta", Some(7)), "{:?}", report.violations);
}

#[tokio::test]
async fn other_damage_is_named_too() {
    let dir = healthy().await;
    with_raw(&dir, |_, ks| {
        let events = ks("events");
        // A tool result answering a call that was never made, as beta's next event.
        let stray =
            Event { seq: Seq::new(13), at_ms: 0, kind: EventKind::MessageAppended(Message::tool_result("ghost", "x")) };
        events.insert(event_key("beta", 13), encode(&stray)).unwrap();
        // A splice-index entry with no splice behind it.
        ks("splices").insert(event_key("beta", 2), "").unwrap();
        // A head whose log is gone, and a key that is not an event key.
        ks("heads").insert("gamma", ks("heads").get("beta").unwrap().unwrap()).unwrap();
        events.insert(b"no-separator".to_vec(), b"x".to_vec()).unwrap();
        // An event whose value names another seq.
        let moved = Event { seq: Seq::new(99), at_ms: 0, kind: EventKind::MessageAppended(Message::user("x")) };
        events.insert(event_key("delta", 1), encode(&moved)).unwrap();
    });
    let (_, report) = audit(&dir);
    let v = &report.violations;
    assert!(found(&report, ViolationKind::ToolResultWithoutCall, "beta", Some(13)), "{v:?}");
    assert!(found(&report, ViolationKind::SpliceIndexMismatch, "beta", None), "{v:?}");
    assert!(found(&report, ViolationKind::HeadWithoutLog, "gamma", None), "{v:?}");
    assert!(found(&report, ViolationKind::InvalidEvent, "delta", Some(1)), "{v:?}");
    assert!(found(&report, ViolationKind::MissingHead, "delta", None), "{v:?}");
    assert!(v.iter().any(|v| v.kind == ViolationKind::MalformedKey), "{v:?}");
}

#[tokio::test]
async fn orphan_blobs_are_listed_and_collected_without_touching_referenced_ones() {
    let dir = healthy().await;
    with_raw(&dir, |_, ks| ks("blobs").insert(SummaryHash::of("orphan").as_bytes().to_vec(), "orphan").unwrap());
    let (engine, report) = audit(&dir);
    assert!(report.ok, "orphans are harmless: {:?}", report.violations);
    assert_eq!(report.orphan_blobs, vec![SummaryHash::of("orphan").to_hex()]);
    assert_eq!(engine.collect_orphan_blobs(true).await.unwrap().len(), 1);
    assert_eq!(engine.collect_orphan_blobs(false).await.unwrap(), vec![SummaryHash::of("orphan")]);
    let after = engine.audit(&AuditOptions::default(), &mut |_| {}).unwrap();
    assert!(after.ok && after.orphan_blobs.is_empty() && after.blobs == 1, "{after:?}");
}

#[tokio::test]
async fn random_bytes_as_event_values_are_errors_never_panics() {
    let dir = healthy().await;
    let mut rng = common::Rng(7);
    with_raw(&dir, |_, ks| {
        let events = ks("events");
        for seq in 1..=300u64 {
            let len = rng.below(64) as usize;
            let mut value: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if rng.below(2) == 0 && !value.is_empty() {
                value[0] = 1; // a plausible format byte, so the msgpack decoder sees the garbage
            }
            events.insert(event_key("fuzz", seq), value).unwrap();
        }
    });
    let (engine, report) = audit(&dir);
    assert!(!report.ok);
    assert!(report.violations.iter().filter(|v| v.session.as_deref() == Some("fuzz")).count() >= 300);
    let s = engine.session("fuzz").unwrap();
    assert!(s.history(Seq::new(1), 300).await.is_err());
    assert!(engine.session("alpha").unwrap().working_memory(10).await.is_ok());
}

#[tokio::test]
async fn a_call_answered_after_the_cut_is_a_cut_pair_even_if_answered_before_the_splice() {
    let dir = healthy().await;
    // beta 13: call x; 14: result x; 15: splice up to 13 (the result at 14 is after the cut).
    with_raw(&dir, |_, ks| {
        let events = ks("events");
        let call = Message::assistant_tool_calls("", vec![ToolCall::new("x", "t", "")]);
        let list = [
            EventKind::MessageAppended(call),
            EventKind::MessageAppended(Message::tool_result("x", "r")),
            EventKind::CompactionSpliced(Splice {
                upto: Seq::new(13),
                previous_upto: Seq::ZERO,
                summary_hash: SummaryHash::of("the summary"),
                n_messages: 13,
                summary_bytes: 11,
                summarizer: "crafted".into(),
            }),
        ];
        for (i, kind) in list.into_iter().enumerate() {
            let seq = 13 + i as u64;
            events.insert(event_key("beta", seq), encode(&Event { seq: Seq::new(seq), at_ms: 0, kind })).unwrap();
        }
        ks("splices").insert(event_key("beta", 15), "").unwrap();
    });
    let (_, report) = audit(&dir);
    assert!(found(&report, ViolationKind::SpliceCutsToolPair, "beta", Some(15)), "{:?}", report.violations);
}

/// Audit applies the readers' rules and the write path's: every event a reader refuses as
/// `Corrupt` is an `invalid_event` (so audit can never pass state a reader refuses), and so is a
/// marker out of order with the head, which the write path refuses.
#[tokio::test]
async fn every_event_a_reader_or_the_write_path_refuses_is_named_by_audit() {
    let memories = |namespace: &str, from: u64, upto: u64| EventKind::MemoriesExtracted {
        namespace: namespace.to_string(),
        from: Seq::new(from),
        upto: Seq::new(upto),
        n_memories: 1,
    };
    let boundary = |episode| EventKind::EpisodeBoundary { episode, reason: palimpsest::BoundaryReason::Explicit };
    // (kind at beta's seq 13, whether a reader refuses it too)
    let cases = [
        (memories("beta", 5, 2), true),
        (memories("beta", 0, 13), true),
        (memories("a b", 0, 2), true),
        (boundary(u64::MAX), true),
        (boundary(13), true),
        (boundary(5), false),
    ];
    for (kind, reader_refuses) in cases {
        let dir = healthy().await;
        let event = Event { seq: Seq::new(13), at_ms: 0, kind: kind.clone() };
        with_raw(&dir, |_, ks| ks("events").insert(event_key("beta", 13), encode(&event)).unwrap());
        let (engine, report) = audit(&dir);
        assert!(found(&report, ViolationKind::InvalidEvent, "beta", Some(13)), "{kind:?}: {:?}", report.violations);
        // The head is brought up to the log, so that readers reach seq 13.
        let beta = palimpsest::SessionId::new("beta").unwrap();
        engine.rebuild(Some(&beta)).await.unwrap();
        let read = engine.session("beta").unwrap().history(Seq::new(13), 1).await;
        assert_eq!(matches!(read, Err(palimpsest::Error::Corrupt { .. })), reader_refuses, "{kind:?}: {read:?}");
    }
}

#[tokio::test]
async fn a_memory_record_readers_cannot_decode_is_named() {
    let dir = healthy().await;
    with_raw(&dir, |_, ks| {
        let mut key = b"beta\0".to_vec();
        key.extend_from_slice(&[7u8; 32]);
        ks("memories").insert(key, vec![1u8, 0xc1]).unwrap();
        ks("memories").insert(b"no-separator".to_vec(), vec![1u8]).unwrap();
    });
    let (engine, report) = audit(&dir);
    let v = &report.violations;
    assert!(v.iter().any(|v| v.kind == ViolationKind::UndecodableRecord), "{v:?}");
    assert!(v.iter().any(|v| v.kind == ViolationKind::MalformedKey), "{v:?}");
    assert!(matches!(engine.memories("beta", 10), Err(palimpsest::Error::Corrupt { .. })));
}

/// A head at `Seq::MAX` (reachable only by damage: imports stop 2^32 below it) refuses every write
/// with an error; nothing panics, and nothing is written.
#[tokio::test]
async fn a_session_at_the_highest_seq_refuses_writes_with_an_error_never_a_panic() {
    let dir = healthy().await;
    with_raw(&dir, |_, ks| {
        let heads = ks("heads");
        let bytes = heads.get("beta").unwrap().unwrap();
        let head: palimpsest::Head = rmp_serde::from_slice(&bytes[1..]).expect("a head decodes");
        let mut value = serde_json::to_value(&head).unwrap();
        value["last_seq"] = serde_json::json!(Seq::MAX.get());
        let head: palimpsest::Head = serde_json::from_value(value).unwrap();
        let mut out = vec![1u8];
        out.extend(rmp_serde::to_vec(&head).unwrap());
        heads.insert("beta", out).unwrap();
        let last = Event { seq: Seq::MAX, at_ms: 0, kind: EventKind::MessageAppended(Message::user("the last")) };
        ks("events").insert(event_key("beta", Seq::MAX.get()), encode(&last)).unwrap();
    });
    let (engine, _) = audit(&dir);
    let s = engine.session("beta").unwrap();
    let before = (s.history(Seq::new(1), 100).await.unwrap(), s.head().await.unwrap());
    let full =
        |r: Result<(), palimpsest::Error>| matches!(r, Err(palimpsest::Error::InvalidArgument { what: "seq", .. }));
    assert!(full(s.append(Message::user("one more")).await.map(drop)));
    assert!(full(s.close_episode().await.map(drop)));
    assert!(full(s.delete().await.map(drop)));
    assert!(full(s.compact(CompactionRequest::upto(Seq::new(4))).await.map(drop)));
    let line = r#"{"role":"user","content":"imported"}"#;
    assert!(matches!(s.import_jsonl(line).await, Err(palimpsest::Error::InvalidImport { line: 1, .. })));
    assert_eq!(s.history(Seq::MAX, 10).await.unwrap().len(), 1);
    // A seq gap of 2^62 behind the last message costs a logarithmic number of reads, not one per
    // 16 seqs: the window finds the messages before the gap.
    let wm = s.working_memory(10).await.unwrap();
    assert_eq!(wm.messages.last().map(|m| m.seq), Some(Seq::MAX));
    assert!(wm.messages.len() > 1, "the messages before the gap are found: {wm:?}");
    assert_eq!((s.history(Seq::new(1), 100).await.unwrap(), s.head().await.unwrap()), before, "nothing was written");
}
