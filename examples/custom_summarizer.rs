//! A custom summarizer: palimpsest calls your code to turn old messages into a summary (a model
//! behind your own client, a rule set, a service). Implement [`Summarizer`] and open the engine
//! with `Engine::open_with_summarizer`. The engine cuts long spans into chunks and asks for a
//! merge; it checks every reply (length, control characters) and abandons the compaction, leaving
//! the session unchanged, on an error.
//!
//! Run it with `cargo run --example custom_summarizer`. Offline, in well under a second.

use std::collections::BTreeMap;
use std::sync::Arc;

use palimpsest::{
    BoxFuture, CompactionOutcome, CompactionRequest, Config, Engine, Error, Message, Role, Summarizer, SummaryInput,
    SummaryTask,
};

/// Summarizes by counting what each role talked about: the most frequent longer words.
struct TopicSummarizer;

/// Words listed per summary.
const TOPICS: usize = 8;

impl Summarizer for TopicSummarizer {
    fn name(&self) -> &str {
        "topics"
    }

    fn summarize(&self, input: SummaryInput) -> BoxFuture<'_, Result<String, Error>> {
        Box::pin(async move {
            // A merge combines chunk summaries; the other tasks summarize messages.
            let text = if matches!(input.task, SummaryTask::Merge) {
                input.partials.join("\n")
            } else {
                let mut counts: BTreeMap<String, usize> = BTreeMap::new();
                let users = input.messages.iter().filter(|m| m.message.role == Role::User);
                for word in users.flat_map(|m| m.message.content.split(|c: char| !c.is_alphanumeric())) {
                    if word.chars().count() > 4 {
                        *counts.entry(word.to_lowercase()).or_default() += 1;
                    }
                }
                let mut ranked: Vec<_> = counts.into_iter().collect();
                ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                let topics: Vec<String> = ranked.iter().take(TOPICS).map(|(w, n)| format!("{w} ({n})")).collect();
                let previous = input.previous_summary.map(|p| format!("{p}\n")).unwrap_or_default();
                format!("{previous}{} messages; the user asked about: {}", input.messages.len(), topics.join(", "))
            };
            // The reply must fit `max_summary_bytes`; cut at a character boundary.
            Ok(text[..text.floor_char_boundary(input.max_summary_bytes)].to_string())
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open_with_summarizer(Config::new(dir.path().join("memory")), Arc::new(TopicSummarizer))?;
    let session = engine.session("support:ticket-981")?;
    let questions = [
        "My invoice shows a duplicate charge for March.",
        "The duplicate charge is still on my invoice.",
        "Can you refund the duplicate charge?",
        "Also, the export button in reports fails.",
        "The reports export fails with a timeout.",
    ];
    for (i, q) in questions.iter().cycle().take(30).enumerate() {
        session.append(Message::user(*q)).await?;
        session.append(Message::assistant(format!("Looking into it (step {i})."))).await?;
    }
    let outcome = session.compact(CompactionRequest { upto: None, focus: Some("billing".to_string()) }).await?;
    let CompactionOutcome::Spliced { n_messages, summary_hash, .. } = outcome else {
        return Err(format!("expected a splice, got {outcome:?}").into());
    };
    let memory = session.working_memory(6).await?;
    let summary = memory.summary.ok_or("the working memory has the summary")?;
    println!("{n_messages} messages summarized by `topics` (blake3 {summary_hash}):\n{}", summary.text);
    println!(
        "then {} recent messages, #{}..",
        memory.messages.len(),
        memory.messages.first().map_or(0, |m| m.seq.get())
    );
    engine.drain(std::time::Duration::from_secs(10), true).await;
    Ok(())
}
