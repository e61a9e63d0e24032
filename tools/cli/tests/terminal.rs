//! The tool on a terminal, through a pseudo-terminal: progress bars are drawn (and cleared) when
//! stderr is one, and `delete` asks for confirmation when stdin is one.

mod common;

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::process::{Command, Stdio};

use common::{code, demo_db, palimpsest, stderr, stdout};

/// Which of the child's streams are the terminal.
#[derive(Clone, Copy)]
enum OnTerminal {
    /// stderr (stdin empty, stdout piped).
    Stderr,
    /// stdin, fed `input` (stdout and stderr piped).
    Stdin(&'static str),
}

/// What a run on a terminal produced.
struct Run {
    code: i32,
    stdout: String,
    /// stderr, when it was piped.
    stderr: String,
    /// Everything the terminal received (echoed input included).
    terminal: String,
}

/// Runs `palimpsest` with one stream on a new pseudo-terminal.
fn on_terminal(args: &[&str], which: OnTerminal) -> Run {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two new file descriptors into the two ints; a null name, termios and
    // window size are allowed.
    let rc =
        unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened by openpty and nothing else owns them.
    let (mut master, slave) = unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut command = Command::new(env!("CARGO_BIN_EXE_palimpsest"));
    command.args(args).env_remove("RUST_LOG").stdout(Stdio::piped());
    match which {
        OnTerminal::Stderr => {
            command.stdin(Stdio::null()).stderr(Stdio::from(slave));
        }
        OnTerminal::Stdin(input) => {
            // The terminal holds the line until the child reads it.
            master.write_all(input.as_bytes()).expect("write to the terminal");
            command.stdin(Stdio::from(slave)).stderr(Stdio::piped());
        }
    }
    let child = command.spawn().expect("the binary runs");
    // The child now holds the only copies of the terminal's other side.
    drop(command);
    // Read the terminal while the child runs, so it never blocks on a full buffer; the read ends
    // (with EIO) once the child, the last holder of the other side, is gone.
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = master.read(&mut chunk) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    let out = child.wait_with_output().expect("the binary finishes");
    let terminal = reader.join().expect("the reader thread");
    Run { code: code(&out), stdout: stdout(&out), stderr: stderr(&out), terminal }
}

#[test]
fn on_a_terminal_export_draws_a_bar_and_clears_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = demo_db(tmp.path(), "2");
    let out_file = tmp.path().join("travel.jsonl");
    let args =
        ["export", "--db", db.as_str(), "--session", "demo-2-travel", "--out", out_file.to_str().expect("utf-8")];
    let run = on_terminal(&args, OnTerminal::Stderr);
    assert_eq!(run.code, 0, "terminal: {}", run.terminal);
    assert!(run.stdout.starts_with("exported "), "the result stays on stdout: {}", run.stdout);
    assert!(run.terminal.contains("export [") && run.terminal.contains(" events ("), "a bar: {:?}", run.terminal);
    assert!(run.terminal.contains("\u{1b}[2K"), "and cleared: {:?}", run.terminal);
}

#[test]
fn on_a_terminal_compact_prints_its_steps_and_counts_chunks_on_a_bar() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = demo_db(tmp.path(), "2");
    // The smallest chunk size cuts a demo session's span into several chunks.
    let config = tmp.path().join("small-chunks.json");
    std::fs::write(&config, r#"{"compaction": {"chunk_bytes": 1024}}"#).expect("write");
    let args =
        ["compact", "--db", db.as_str(), "--config", config.to_str().expect("utf-8"), "--session", "demo-2-travel"];
    let run = on_terminal(&args, OnTerminal::Stderr);
    assert_eq!(run.code, 0, "terminal: {}", run.terminal);
    assert!(run.stdout.starts_with("spliced demo-2-travel: "), "{}", run.stdout);
    assert!(run.terminal.contains("loaded ") && run.terminal.contains("strategy: "), "steps: {:?}", run.terminal);
    assert!(run.terminal.contains("chunks ["), "a bar counting the chunks: {:?}", run.terminal);
    assert!(!run.terminal.contains("chunk 1/"), "no line per chunk under the bar: {:?}", run.terminal);
}

#[test]
fn on_a_terminal_delete_asks_and_only_yes_deletes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = demo_db(tmp.path(), "2");
    let args = ["delete", "--db", db.as_str(), "--session", "demo-2-travel"];
    let declined = on_terminal(&args, OnTerminal::Stdin("n\n"));
    assert_eq!(declined.code, 1, "stderr: {}", declined.stderr);
    assert!(declined.stderr.starts_with("delete session demo-2-travel ("), "asked: {}", declined.stderr);
    assert!(declined.stderr.contains("palimpsest: error: demo-2-travel was not deleted"), "{}", declined.stderr);
    let show = palimpsest(&["show", "--db", &db, "--session", "demo-2-travel"]);
    assert_eq!(code(&show), 0, "declining deletes nothing: {}", stderr(&show));

    let accepted = on_terminal(&args, OnTerminal::Stdin("y\n"));
    assert_eq!(accepted.code, 0, "stderr: {}", accepted.stderr);
    assert!(accepted.stdout.starts_with("deleted demo-2-travel ("), "{}", accepted.stdout);
    let show = palimpsest(&["show", "--db", &db, "--session", "demo-2-travel"]);
    assert_eq!(code(&show), 1, "gone after yes");
}
