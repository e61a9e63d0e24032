//! `palimpsest serve` refuses, with exit 2 and one line on stderr, before touching the database:
//! a non-loopback address without tokens, a bad `[server]` or `[engine]` value, an unknown table.

use std::process::Command;

fn serve(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_palimpsest")).arg("serve").args(args).output().expect("run");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).to_string())
}

#[test]
fn bad_setups_exit_2_and_leave_no_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("db");
    let db_arg = db.to_str().expect("utf8 path");
    let (code, err) = serve(&["--db", db_arg, "--listen", "0.0.0.0:0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("without authentication") && err.contains("--insecure-no-auth"), "{err}");
    for (name, text, needle) in [
        ("bad-server.toml", "[server]\nrequest_timeout_ms = 1\n", "server.request_timeout_ms"),
        ("unknown-field.toml", "[server]\nbogus = 1\n", "bogus"),
        ("bad-engine.toml", "[engine]\ncache_mb = 0\n", "cache_mb"),
        ("unknown-table.toml", "[servr]\n", "servr"),
        ("bad-hash.json", r#"{"server": {"token_sha256": ["abc"]}}"#, "token_sha256"),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, text).expect("write");
        let (code, err) = serve(&["--db", db_arg, "--listen", "127.0.0.1:0", "--config", file.to_str().expect("utf8")]);
        assert_eq!(code, 2, "{name}: {err}");
        assert!(err.contains(needle), "{name}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{name}: one line: {err}");
    }
    assert!(!db.exists(), "nothing was created");
}
