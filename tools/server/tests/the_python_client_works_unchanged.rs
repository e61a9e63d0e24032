//! The real agent-memory-server Python client (agent-memory-client 0.14.0, installed into the test
//! venv by scripts/setup-model-venv.sh) drives an in-process server on a free loopback port:
//! `tests/ams_client.py` checks every call its users make, and concurrent appends losing nothing.
//! Needs `PALIMPSEST_MODEL_PYTHON` (set by scripts/test): missing, the test fails, never skips.

mod common;

use std::process::Stdio;

use common::TestServer;
use palimpsest::AuditOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_python_client_gets_upstream_behaviour_and_loses_no_append() {
    let python = std::env::var("PALIMPSEST_MODEL_PYTHON").expect(
        "PALIMPSEST_MODEL_PYTHON must name the test venv's python (scripts/setup-model-venv.sh prints it; scripts/test sets it)",
    );
    // Defaults, as `palimpsest serve` runs them (summarization on).
    let mut s = TestServer::start(|_| {}).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ams_client.py");
    let child = tokio::process::Command::new(&python)
        .arg(script)
        .arg(format!("http://{}", s.addr))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the venv's python");
    let out = tokio::time::timeout(std::time::Duration::from_secs(300), child.wait_with_output())
        .await
        .expect("the client script finishes within 5 minutes")
        .expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "client script failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("all checks passed"), "{stdout}");
    assert!(stdout.contains("ok 404 raises MemoryNotFoundError"), "{stdout}");
    assert!(s.engine.audit(&AuditOptions::default(), &mut |_| {}).expect("audit").ok);
    s.stop().await;
}
