//! The foundation's behaviour through the public API: dense seqs, the working-memory window,
//! history, listing, deletion, and reopen.

mod backends;
mod common;

use backends::Store;
use common::{engine, turn};
use palimpsest::{Components, Durability, Engine, Error, EventKind, Message, Role, Seq, ToolCall};

/// An engine on `store` in `durability`, the defaults otherwise (what `common::engine` opens on fjall).
async fn open(store: &Store, durability: Durability) -> Engine {
    store.open_with(Components::default(), |config| config.durability = durability).await
}

async fn appends_get_dense_seqs_and_survive_reopen(store: Store) {
    let engine = open(&store, Durability::Sync).await;
    let s = engine.session("s1").unwrap();
    assert_eq!(s.append(Message::system("be brief")).await.unwrap(), Seq::new(1));
    let range = s.append_many(turn(0)).await.unwrap();
    assert_eq!(range, Seq::new(2)..Seq::new(6));
    assert_eq!(s.append(Message::user("bye")).await.unwrap(), Seq::new(6));
    drop((s, engine));

    let engine = open(&store, Durability::Sync).await;
    let s = engine.session("s1").unwrap();
    let history = s.history(Seq::new(1), 100).await.unwrap();
    assert_eq!(history.iter().map(|e| e.seq.get()).collect::<Vec<_>>(), (1..=6).collect::<Vec<_>>());
    assert_eq!(history[2].message().unwrap().tool_calls[0].name, "run");
    let head = s.head().await.unwrap().unwrap();
    assert_eq!((head.last_seq(), head.n_messages()), (Seq::new(6), 6));
    assert!(head.open_calls().is_empty());
}

async fn working_memory_is_the_last_messages_oldest_first(store: Store) {
    let engine = open(&store, Durability::Buffered).await;
    let s = engine.session("wm").unwrap();
    for i in 0..30 {
        s.append_many(turn(i)).await.unwrap();
    }
    let wm = s.working_memory(10).await.unwrap();
    assert_eq!(wm.last_seq, Seq::new(120));
    assert_eq!(wm.n_messages, Some(120));
    assert!(wm.summary.is_none());
    // 111 is a tool result whose call (110) fell outside the window: it is dropped.
    assert_eq!(wm.messages.iter().map(|m| m.seq.get()).collect::<Vec<_>>(), (112..=120).collect::<Vec<_>>());
    assert_eq!(wm.messages[0].message.role, Role::Assistant);
    let all = s.working_memory(1000).await.unwrap();
    assert_eq!(all.messages.len(), 120);
    assert_eq!(s.working_memory(0).await.unwrap().messages.len(), 0);
}

async fn reads_are_bounded_and_unknown_sessions_are_not_found(store: Store) {
    let engine = open(&store, Durability::Buffered).await;
    let s = engine.session("nobody").unwrap();
    assert!(matches!(s.working_memory(5).await, Err(Error::NotFound { .. })));
    assert!(matches!(s.history(Seq::new(1), 5).await, Err(Error::NotFound { .. })));
    s.append(Message::user("hi")).await.unwrap();
    assert!(matches!(s.working_memory(10_001).await, Err(Error::InvalidArgument { .. })));
    assert!(matches!(s.history(Seq::new(1), 10_001).await, Err(Error::InvalidArgument { .. })));
    assert_eq!(s.history(Seq::new(5), 10).await.unwrap().len(), 0);
}

async fn bad_input_is_refused_and_changes_nothing(store: Store) {
    let engine = open(&store, Durability::Buffered).await;
    let s = engine.session("strict").unwrap();
    s.append_many(turn(0)).await.unwrap();
    s.append(Message::assistant_tool_calls("", vec![ToolCall::new("open-1", "fetch", "{}")])).await.unwrap();
    let before = s.history(Seq::new(1), 100).await.unwrap();
    let head_before = s.head().await.unwrap();

    let big = "x".repeat((1 << 20) + 1);
    type Case = (Vec<Message>, fn(&Error) -> bool);
    let cases: Vec<Case> = vec![
        (vec![Message::user("")], |e| matches!(e, Error::InvalidMessage { index: 0, .. })),
        (vec![Message::user(big)], |e| matches!(e, Error::InvalidMessage { .. })),
        (vec![Message::tool_result("nope", "x")], |e| matches!(e, Error::UnknownToolCall { .. })),
        (vec![Message::tool_result("call-0", "again")], |e| matches!(e, Error::ToolCallAlreadyAnswered { .. })),
        (vec![Message::assistant_tool_calls("", vec![ToolCall::new("open-1", "x", "")])], |e| {
            matches!(e, Error::DuplicateToolCallId { .. })
        }),
        (
            vec![Message::assistant_tool_calls("", vec![ToolCall::new("d", "x", ""), ToolCall::new("d", "y", "")])],
            |e| matches!(e, Error::DuplicateToolCallId { .. }),
        ),
        (vec![Message::new(Role::User, "x").with_metadata("", "v")], |e| matches!(e, Error::InvalidMessage { .. })),
        (vec![Message { tool_call_id: Some("open-1".into()), ..Message::user("hi") }], |e| {
            matches!(e, Error::InvalidMessage { .. })
        }),
        (vec![Message { tool_call_id: None, ..Message::tool_result("x", "y") }], |e| {
            matches!(e, Error::InvalidMessage { .. })
        }),
        (vec![], |e| matches!(e, Error::InvalidArgument { .. })),
        // A batch is atomic: a good first message does not land when the second is bad.
        (vec![Message::user("fine"), Message::tool_result("nope", "x")], |e| {
            matches!(e, Error::UnknownToolCall { index: 1, .. })
        }),
    ];
    for (batch, expected) in cases {
        let err = s.append_many(batch.clone()).await.expect_err("must be refused");
        assert!(expected(&err), "{batch:?} gave {err:?}");
    }
    assert_eq!(s.history(Seq::new(1), 100).await.unwrap(), before);
    assert_eq!(s.head().await.unwrap(), head_before);
    assert!(matches!(engine.session("bad id"), Err(Error::InvalidSessionId { .. })));
}

async fn sessions_are_listed_and_deletion_is_recorded(store: Store) {
    let engine = open(&store, Durability::Sync).await;
    for id in ["b", "a", "c"] {
        engine.session(id).unwrap().append_many(turn(1)).await.unwrap();
    }
    assert_eq!(
        engine.list_sessions(None, 10).await.unwrap().iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    let a = engine.session("a").unwrap();
    assert_eq!(engine.list_sessions(Some(a.id()), 1).await.unwrap()[0].as_str(), "b");

    let b = engine.session("b").unwrap();
    assert_eq!(b.delete().await.unwrap(), Seq::new(5));
    assert!(matches!(b.delete().await, Err(Error::NotFound { .. })));
    assert!(matches!(b.working_memory(5).await, Err(Error::NotFound { .. })));
    let left = b.history(Seq::new(1), 10).await.unwrap();
    assert_eq!(left.len(), 1, "only the deletion event remains");
    assert!(matches!(left[0].kind, EventKind::SessionDeleted { n_events_removed: 4 }));
    drop((a, b, engine));

    let engine = open(&store, Durability::Sync).await;
    assert_eq!(engine.list_sessions(None, 10).await.unwrap().len(), 2);
    let b = engine.session("b").unwrap();
    assert_eq!(b.append(Message::user("fresh start")).await.unwrap(), Seq::new(6));
    let wm = b.working_memory(10).await.unwrap();
    assert_eq!((wm.messages.len(), wm.n_messages), (1, Some(1)));
}

async fn time_travel_shows_the_window_as_of_a_past_seq(store: Store) {
    let engine = open(&store, Durability::Buffered).await;
    let s = engine.session("tt").unwrap();
    for i in 0..5 {
        s.append_many(turn(i)).await.unwrap();
    }
    let at = s.working_memory_at(Seq::new(8), 3).await.unwrap();
    assert_eq!(at.last_seq, Seq::new(8));
    assert_eq!(at.messages.iter().map(|m| m.seq.get()).collect::<Vec<_>>(), vec![6, 7, 8]);
    assert!(matches!(s.working_memory_at(Seq::new(21), 3).await, Err(Error::InvalidArgument { .. })));
    assert!(matches!(s.working_memory_at(Seq::ZERO, 3).await, Err(Error::InvalidArgument { .. })));
}

async fn concurrent_appends_to_one_session_are_totally_ordered(store: Store) {
    // 200 user turns, all within one episode (no turn-cap boundary), so the seqs are 1..=200.
    let engine = store.open_with(Components::default(), |config| config.episodes.max_turns_per_episode = 200).await;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let s = engine.session("shared").unwrap();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..25 {
                seqs.push(s.append(Message::user(format!("w{w} m{i}"))).await.unwrap().get());
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let seqs = t.await.unwrap();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "one writer's appends keep their order");
        all.extend(seqs);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=200).collect::<Vec<_>>());
}

on_both_backends!(
    appends_get_dense_seqs_and_survive_reopen,
    working_memory_is_the_last_messages_oldest_first,
    reads_are_bounded_and_unknown_sessions_are_not_found,
    bad_input_is_refused_and_changes_nothing,
    sessions_are_listed_and_deletion_is_recorded,
    time_travel_shows_the_window_as_of_a_past_seq,
    concurrent_appends_to_one_session_are_totally_ordered,
);

// fjall-only: a second open of one directory is `Locked`.
#[test]
fn a_second_engine_on_the_same_directory_is_refused() {
    let (_engine, dir) = engine(Durability::Buffered);
    let err = palimpsest::Engine::open(palimpsest::Config::new(dir.path().join("db"))).err().expect("locked");
    assert!(matches!(err, Error::Locked { .. }), "{err:?}");
}

// fjall-only: a directory that is not a database.
#[test]
fn a_directory_that_is_not_a_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "hello").unwrap();
    let err = palimpsest::Engine::open(palimpsest::Config::new(dir.path())).err().expect("refused");
    assert!(matches!(err, Error::NotADatabase { .. }), "{err:?}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "nothing was written");
}

// fjall-only: what fjall leaves when killed while creating a database.
#[tokio::test]
async fn a_database_whose_creation_was_interrupted_is_created_afresh() {
    // What fjall leaves when killed after its lock, keyspace folder and first journal but
    // before its version marker: no data can have been acknowledged yet.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    std::fs::create_dir_all(db.join("keyspaces")).unwrap();
    std::fs::write(db.join("lock"), b"").unwrap();
    std::fs::write(db.join("0.jnl"), b"").unwrap();
    let engine = palimpsest::Engine::open(palimpsest::Config::new(&db)).expect("an interrupted creation is redone");
    engine.session("s").unwrap().append(Message::user("hello")).await.unwrap();

    // Anything more than fjall's creation artifacts is still refused.
    let other = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(other.path().join("keyspaces")).unwrap();
    std::fs::write(other.path().join("lock"), b"").unwrap();
    std::fs::write(other.path().join("notes.txt"), b"mine").unwrap();
    let err = palimpsest::Engine::open(palimpsest::Config::new(other.path())).err().expect("refused");
    assert!(matches!(err, Error::NotADatabase { .. }), "{err:?}");
    assert!(other.path().join("lock").exists(), "nothing of a foreign directory is removed");
}
