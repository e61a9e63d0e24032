//! Prompts for model-based summarizers. The focus text, when given, goes into every prompt
//! (whole, chunk and merge), so a compaction's steering reaches each model call. Every text put
//! into a prompt is cleaned of escape sequences and control characters (`sanitize`).

use super::{SummaryInput, SummaryTask, render_transcript, sanitize};

/// A chat prompt: one system and one user message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prompt {
    /// The system message.
    pub system: String,
    /// The user message.
    pub user: String,
}

const SYSTEM: &str = "You compress the conversation of an AI agent into its working-memory summary. \
Keep what the agent needs to carry on: the user's goals, constraints and decisions; each tool used with its key \
arguments and outcome; facts learned; open questions and next steps. Write plain text, no preamble, \
no markdown headings.";

/// Builds the prompt for `input`.
pub fn build(input: &SummaryInput) -> Prompt {
    let limit = format!("Stay under {} characters.", input.max_summary_bytes);
    // The compaction driver cleans the focus already; a direct caller of a summarizer may not have.
    let focus = input.focus.as_deref().map(|f| format!("\n\nFocus on: {}", sanitize(f))).unwrap_or_default();
    let previous =
        input.previous_summary.as_deref().map(|s| format!("Summary so far:\n{}\n\n", sanitize(s))).unwrap_or_default();
    let user = match input.task {
        SummaryTask::Whole => format!(
            "{previous}New messages:\n{}\nWrite the updated summary. {limit}{focus}",
            render_transcript(&input.messages)
        ),
        SummaryTask::Chunk { index, n_chunks } => format!(
            "This is part {} of {n_chunks} of the conversation.\n{}\nSummarize this part. {limit}{focus}",
            index + 1,
            render_transcript(&input.messages)
        ),
        SummaryTask::Merge => {
            let parts: Vec<String> =
                input.partials.iter().enumerate().map(|(i, p)| format!("Part {}:\n{}", i + 1, sanitize(p))).collect();
            format!(
                "{previous}Summaries of consecutive parts of the conversation:\n{}\n\nMerge them into one summary. {limit}{focus}",
                parts.join("\n\n")
            )
        }
    };
    Prompt { system: SYSTEM.to_string(), user }
}
