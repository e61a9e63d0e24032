//! The OpenAI-compatible summarizer against a real model: llama.cpp's server running
//! SmolLM2-135M-Instruct, started by `scripts/model_server.py`. A 135M model writes poor
//! summaries, so only the structure is asserted: the call succeeds and its text passes the same
//! `check_summary` the compaction driver applies. This is the test that proves the request we
//! build is one a real server accepts and the reply we parse is one a real server sends.
//!
//! Needs the model venv: run `scripts/setup-model-venv.sh`, then either leave it at `.venv` or
//! point `PALIMPSEST_MODEL_PYTHON` at its python. Without it the test fails, never skips.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use palimpsest::{
    Message, OpenAiConfig, OpenAiSummarizer, RetryConfig, Seq, StoredMessage, Summarizer, SummaryInput, SummaryTask,
    ToolCall, check_summary,
};

/// Longest wait for the server to load the model and answer its health check.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest wait for the one model call (a reply takes about 10 s on a slow 2-core machine).
const REQUEST_TIMEOUT_MS: u64 = 120_000;
/// The size limit the compaction driver applies by default.
const MAX_SUMMARY_BYTES: usize = 16_384;

/// The model server process; killed (and reaped) when dropped, so a failing assertion does not
/// leave it running.
struct ModelServer {
    child: Child,
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The python of the model venv: `$PALIMPSEST_MODEL_PYTHON`, else `.venv/bin/python` in the
/// repository. Panics with the fix when neither exists.
fn model_python(root: &Path) -> PathBuf {
    let (python, source) = match std::env::var_os("PALIMPSEST_MODEL_PYTHON") {
        Some(path) if !path.is_empty() => (PathBuf::from(path), "PALIMPSEST_MODEL_PYTHON"),
        _ => (root.join(".venv/bin/python"), "the default venv"),
    };
    assert!(
        python.is_file(),
        "no model python at {} ({source}). Run scripts/setup-model-venv.sh and set \
         PALIMPSEST_MODEL_PYTHON to the path it prints (or keep the default .venv).",
        python.display()
    );
    python
}

/// Starts `scripts/model_server.py` and waits (bounded) for its `READY <base_url>` line.
fn start_model_server() -> (ModelServer, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = model_python(root);
    let child = Command::new(&python)
        .arg(root.join("scripts/model_server.py"))
        // The server exits when its stdin closes: a second guard, should this process die
        // without running the destructor.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {} scripts/model_server.py: {e}", python.display()));
    let mut server = ModelServer { child };

    // Read stdout on a thread so the wait for it can be bounded.
    let stdout = server.child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let result = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = tx.send(result);
    });
    let line = match rx.recv_timeout(READY_TIMEOUT) {
        Ok(Ok(line)) => line,
        Ok(Err(e)) => panic!("cannot read the model server's stdout: {e}"),
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("the model server did not print READY within {READY_TIMEOUT:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the thread reading the model server's stdout died"),
    };
    let Some(base_url) = line.trim().strip_prefix("READY ") else {
        let status = server.child.try_wait();
        panic!("the model server printed {line:?} instead of READY (exit status: {status:?}); see its stderr above");
    };
    assert!(base_url.starts_with("http://127.0.0.1:"), "unexpected address {base_url:?}");
    (server, base_url.to_string())
}

fn stored(seq: u64, message: Message) -> StoredMessage {
    StoredMessage { seq: Seq::new(seq), at_ms: 1_700_000_000_000 + seq, message }
}

#[test]
fn a_real_model_summarizes_a_conversation_with_a_tool_call() {
    let (_server, base_url) = start_model_server();
    let config = OpenAiConfig {
        base_url,
        model: "smollm2-135m-instruct".to_string(),
        api_key: None,
        api_key_env: "PALIMPSEST_TEST_KEY_THAT_IS_NEVER_SET".to_string(),
        connect_timeout_ms: 5_000,
        request_timeout_ms: REQUEST_TIMEOUT_MS,
        max_tokens: 64,
        temperature: 0.0,
        retry: RetryConfig::default(),
    };
    let summarizer = OpenAiSummarizer::new(&config).unwrap();
    let input = SummaryInput {
        task: SummaryTask::Whole,
        previous_summary: None,
        messages: vec![
            stored(1, Message::user("What is the weather in Paris today? I need to pack for a trip.")),
            stored(
                2,
                Message::assistant_tool_calls(
                    "",
                    vec![ToolCall::new("call_1", "get_weather", r#"{"city":"Paris","unit":"celsius"}"#)],
                ),
            ),
            stored(3, Message::tool_result("call_1", r#"{"temperature_c":21,"sky":"sunny","rain_chance":0.1}"#)),
            stored(4, Message::assistant("It is 21 °C and sunny in Paris, with a 10% chance of rain.")),
        ],
        partials: Vec::new(),
        focus: Some("the user's travel plans".to_string()),
        max_summary_bytes: 1_024,
    };

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // Bounded by the summarizer's own request timeout.
    let reply = runtime.block_on(summarizer.summarize(input));
    let text = reply.unwrap_or_else(|e| panic!("the real model call failed: {e}"));
    assert!(!text.trim().is_empty(), "the model returned an empty summary");
    let checked = check_summary(&text, MAX_SUMMARY_BYTES)
        .unwrap_or_else(|e| panic!("check_summary refused the model's reply {text:?}: {e}"));
    assert!(!checked.is_empty());
}
