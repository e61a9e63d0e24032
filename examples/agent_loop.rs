//! An agent loop with background compaction: the starting point for embedding palimpsest in an
//! agent. Each turn appends the user's message, the model's tool calls and their results, and the
//! reply; each model call is served the working memory (the latest summary plus the recent
//! messages), whose cost does not grow with the session. Every few turns a compaction is started
//! in the background; the loop never waits for it, and the turns appended meanwhile are kept.
//!
//! Run it with `cargo run --example agent_loop`. It uses a temporary directory and the embedded
//! summarizer (offline, deterministic), and finishes in about a second.

use std::time::Duration;

use palimpsest::{CompactionOutcome, CompactionRequest, Config, Engine, Message, ToolCall};

/// Turns the example plays.
const TURNS: usize = 40;
/// Messages sent to the model with each turn, after the summary.
const WINDOW_MESSAGES: usize = 16;
/// A background compaction is started every this many turns (if none is running).
const COMPACT_EVERY_TURNS: usize = 10;
/// The longest the example waits at the end for background work (compaction, extraction).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut config = Config::new(dir.path().join("memory"));
    // Keep the last 12 messages verbatim; everything older may be summarized.
    config.compaction.keep_last_messages = 12;
    let engine = Engine::open(config)?;
    let session = engine.session("user-42:chat-7")?;

    let mut compaction: Option<tokio::task::JoinHandle<Result<CompactionOutcome, palimpsest::Error>>> = None;
    for turn in 1..=TURNS {
        let city = ["Oslo", "Lisbon", "Kyoto", "Quito"][turn % 4];
        session.append(Message::user(format!("Turn {turn}: what is the weather in {city}? I prefer Celsius."))).await?;

        // What the model would be sent for this turn.
        let memory = session.working_memory(WINDOW_MESSAGES).await?;
        let prompt_messages = memory.messages.len() + usize::from(memory.summary.is_some());

        // The model asks for a tool, the tool answers, the model replies. A call and its result
        // are never separated by a compaction.
        let call_id = format!("call-{turn}");
        let arguments = format!(r#"{{"city":"{city}"}}"#);
        session
            .append(Message::assistant_tool_calls("", vec![ToolCall::new(call_id.as_str(), "weather", arguments)]))
            .await?;
        session.append(Message::tool_result(call_id.as_str(), format!("{city}: 14 C, light rain"))).await?;
        session
            .append(Message::assistant(format!(
                "It is 14 C with light rain in {city} ({prompt_messages} items in context)."
            )))
            .await?;

        // Now and then, summarize old turns in the background. `compact_in_background` returns
        // at once; a second request while one runs resolves to `AlreadyRunning`.
        if turn % COMPACT_EVERY_TURNS == 0 && compaction.as_ref().is_none_or(|c| c.is_finished()) {
            if let Some(done) = compaction.take() {
                report(done.await??);
            }
            compaction = Some(session.compact_in_background(CompactionRequest::default())?);
        }
    }
    if let Some(last) = compaction.take() {
        report(tokio::time::timeout(SHUTDOWN_WAIT, last).await???);
    }

    let memory = session.working_memory(WINDOW_MESSAGES).await?;
    let summary = memory.summary.as_ref().map_or(0, |s| s.text.len());
    println!(
        "{} messages in the session; served: a summary of {summary} bytes up to #{} and {} recent messages",
        memory.n_messages.unwrap_or(0),
        memory.summary.as_ref().map_or(0, |s| s.upto.get()),
        memory.messages.len()
    );
    // Background memory extraction runs after each splice; let it finish before the process ends.
    let drained = engine.drain(SHUTDOWN_WAIT, true).await;
    let memories = engine.memories("user-42", 10)?;
    println!("{} memories extracted, {} extraction jobs left at shutdown", memories.len(), drained.left);
    for m in &memories {
        println!("  {}", m.text);
    }
    Ok(())
}

fn report(outcome: CompactionOutcome) {
    match outcome {
        CompactionOutcome::Spliced { upto, n_messages, .. } => {
            println!("compacted {n_messages} messages up to #{upto} while the agent went on");
        }
        other => println!("compaction: {other:?}"),
    }
}
