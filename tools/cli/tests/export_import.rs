//! `export` and `import` end to end: a round trip into an empty database serves the same working
//! memory and audits clean; a bad line imports nothing and names its line.

mod common;

use common::{assert_one_error_line, code, demo_db, json, palimpsest, palimpsest_with_stdin, stderr, stdout};

#[test]
fn export_then_import_into_an_empty_database_round_trips() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = demo_db(tmp.path(), "2");
    let copy = tmp.path().join("copy");
    let copy = copy.to_str().expect("utf-8");
    let file = tmp.path().join("coding.jsonl");
    let file = file.to_str().expect("utf-8");
    // Session 1 was compacted by the demo: its splice and summary travel too.
    let exported = palimpsest(&["export", "--db", &db, "--session", "demo-1-coding", "--out", file]);
    assert_eq!(code(&exported), 0, "stderr: {}", stderr(&exported));
    let text = std::fs::read_to_string(file).expect("the export file");
    let n = text.lines().count();
    assert_eq!(stdout(&exported), format!("exported {n} events of demo-1-coding to {file}\n"));
    assert!(text.lines().any(|l| l.contains("\"type\":\"compaction_spliced\"")), "the splice is exported");
    let to_stdout = palimpsest(&["export", "--db", &db, "--session", "demo-1-coding"]);
    assert_eq!(code(&to_stdout), 0);
    assert_eq!(stdout(&to_stdout), text, "stdout and --out hold the same lines");

    let imported = palimpsest(&["import", "--db", copy, "--session", "demo-1-coding", file]);
    assert_eq!(code(&imported), 0, "stderr: {}", stderr(&imported));
    assert_eq!(stdout(&imported), format!("imported {n} events into demo-1-coding: #1..#{n}\n"));
    let show =
        |db: &str| json(&palimpsest(&["show", "--db", db, "--session", "demo-1-coding", "--limit", "100", "--json"]));
    let original = show(&db);
    assert!(original["summary"].is_object());
    assert_eq!(show(copy), original);
    let audit = palimpsest(&["audit", "--db", copy, "--json"]);
    assert_eq!(code(&audit), 0, "{}", stdout(&audit));
    assert_eq!(json(&audit)["ok"], true);

    // The same export from stdin, into a second (empty) session of the copy.
    let piped = palimpsest_with_stdin(&["import", "--db", copy, "--session", "again", "-"], text.as_bytes());
    assert_eq!(code(&piped), 0, "stderr: {}", stderr(&piped));
    assert_eq!(json(&palimpsest(&["stats", "--db", copy, "--json"]))["sessions"], 2);
}

#[test]
fn a_bad_line_3_exits_1_naming_it_and_imports_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = demo_db(tmp.path(), "1");
    let file = tmp.path().join("bad.jsonl");
    let lines = [
        r#"{"role":"user","content":"hello"}"#,
        r#"{"role":"assistant","content":"hi"}"#,
        r#"{"role":"tool","content":"orphan result","tool_call_id":"never-called"}"#,
        r#"{"role":"user","content":"bye"}"#,
    ];
    std::fs::write(&file, lines.join("\n")).expect("write");
    let file = file.to_str().expect("utf-8");
    let stats = || stdout(&palimpsest(&["stats", "--db", &db, "--json"]));
    let before = stats();
    for session in ["new-session", "demo-1-coding"] {
        let out = palimpsest(&["import", "--db", &db, "--session", session, file]);
        assert_eq!(code(&out), 1, "stderr: {}", stderr(&out));
        assert_one_error_line(&out, "import line 3");
        assert!(stdout(&out).is_empty());
    }
    let not_json = palimpsest_with_stdin(
        &["import", "--db", &db, "--session", "s", "-"],
        b"{\"role\":\"user\",\"content\":\"a\"}\n\n{\"role\":\"user\",\n",
    );
    assert_eq!(code(&not_json), 1);
    assert_one_error_line(&not_json, "stdin: import line 3: not JSON");
    let not_utf8 = palimpsest_with_stdin(
        &["import", "--db", &db, "--session", "s", "-"],
        b"{\"role\":\"user\",\"content\":\"a\"}\n\n\xff\n",
    );
    assert_eq!(code(&not_utf8), 1);
    assert_one_error_line(&not_utf8, "line 3: not UTF-8");
    assert_eq!(stats(), before, "nothing was imported");
}

#[test]
fn an_unreadable_import_file_exits_2_before_the_database_is_created() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("db");
    let missing = tmp.path().join("missing.jsonl");
    let out = palimpsest(&[
        "import",
        "--db",
        db.to_str().expect("utf-8"),
        "--session",
        "s",
        missing.to_str().expect("utf-8"),
    ]);
    assert_eq!(code(&out), 2);
    assert_one_error_line(&out, "missing.jsonl");
    assert!(!db.exists(), "nothing is created when the input cannot be read");
}

#[test]
fn export_of_an_unknown_session_exits_1() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = demo_db(tmp.path(), "1");
    let out_file = tmp.path().join("out.jsonl");
    let out = palimpsest(&[
        "export",
        "--db",
        &db,
        "--session",
        "no-such-session",
        "--out",
        out_file.to_str().expect("utf-8"),
    ]);
    assert_eq!(code(&out), 1);
    assert_one_error_line(&out, "\"no-such-session\" not found");
    assert!(!out_file.exists(), "a failed export leaves no file");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path()).expect("list").filter_map(Result::ok).collect();
    assert_eq!(leftovers.len(), 1, "only the database: {leftovers:?}");
}
