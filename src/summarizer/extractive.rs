//! The embedded default summarizer: extractive, deterministic, offline. It keeps what an agent
//! needs to carry on, in labelled sections: the user's goals and requests, the assistant's
//! decisions and answers, each tool call with its key arguments and outcome, and open questions
//! (questions asked and tool calls still without a result). When everything does not fit in the
//! size limit, lines matching the focus are kept first, then the first goal, then the most recent
//! lines; the rest are dropped. Same input, same bytes out.
//!
//! Everything taken from the input (message content, tool arguments, earlier summaries, the
//! focus) is cleaned first (`sanitize`: escape sequences removed, control characters replaced),
//! so coloured tool output yields readable lines and the summary always passes `check_summary`.

use super::{BoxFuture, Summarizer, SummaryInput, SummaryTask, sanitize, truncate_bytes};
use crate::error::Error;
use crate::log::event::Role;

/// Longest excerpt of one message, bytes.
const EXCERPT_BYTES: usize = 240;
/// Longest excerpt of tool arguments or a tool result, bytes.
const TOOL_EXCERPT_BYTES: usize = 120;

/// The embedded extractive summarizer.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExtractiveSummarizer;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Section {
    Earlier,
    Goals,
    Decisions,
    Tools,
    Open,
}

impl Section {
    fn title(self) -> &'static str {
        match self {
            Section::Earlier => "Earlier:",
            Section::Goals => "Goals and requests:",
            Section::Decisions => "Decisions and answers:",
            Section::Tools => "Tools used:",
            Section::Open => "Open questions:",
        }
    }
}

struct Line {
    section: Section,
    text: String,
}

impl Summarizer for ExtractiveSummarizer {
    fn name(&self) -> &str {
        "extractive"
    }

    fn summarize(&self, input: SummaryInput) -> BoxFuture<'_, Result<String, Error>> {
        // A span of many thousands of messages takes real CPU time: on a blocking thread when there
        // is a runtime, so no runtime worker (and no append queued behind it) waits for it.
        Box::pin(async move {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => runtime.spawn_blocking(move || summarize(&input)).await.map_err(|e| Error::Summarizer {
                    status: None,
                    message: format!("the extractive summarizer's task failed: {e}"),
                }),
                Err(_) => Ok(summarize(&input)),
            }
        })
    }
}

/// The whole algorithm, synchronous and pure.
pub(crate) fn summarize(input: &SummaryInput) -> String {
    let mut lines = Vec::new();
    if let Some(prev) = &input.previous_summary {
        lines.extend(carry_over(prev));
    }
    match input.task {
        SummaryTask::Merge => {
            for part in &input.partials {
                lines.extend(carry_over(part));
            }
        }
        SummaryTask::Whole | SummaryTask::Chunk { .. } => lines.extend(extract(input)),
    }
    let focus = input.focus.as_deref().map(sanitize);
    let out = fit(lines, focus.as_deref(), input.max_summary_bytes);
    // Every line was cleaned on the way in, so this pass finds nothing to do; it makes "the
    // output is clean" hold by construction rather than by the care of each step above.
    sanitize(&out).into_owned()
}

/// Lines of an earlier summary (or a chunk summary), keeping their section where recognisable.
fn carry_over(summary: &str) -> Vec<Line> {
    let mut section = Section::Earlier;
    let mut out = Vec::new();
    for raw in sanitize(summary).lines() {
        let text = raw.trim();
        if text.is_empty() {
            continue;
        }
        if let Some(s) = [Section::Earlier, Section::Goals, Section::Decisions, Section::Tools, Section::Open]
            .into_iter()
            .find(|s| s.title() == text)
        {
            section = s;
            continue;
        }
        out.push(Line { section, text: text.trim_start_matches("- ").to_string() });
    }
    out
}

fn extract(input: &SummaryInput) -> Vec<Line> {
    let mut lines = Vec::new();
    let mut open: Vec<(&str, String)> = Vec::new();
    // A user question stays open until an assistant message with text follows it.
    let mut questions: Vec<String> = Vec::new();
    for m in &input.messages {
        let msg = &m.message;
        let content = sanitize(&msg.content);
        let first = excerpt(&content, EXCERPT_BYTES);
        match msg.role {
            Role::User if !first.is_empty() => {
                lines.push(Line { section: Section::Goals, text: format!("[{}] {first}", m.seq) });
                if let Some(q) = last_question(&content) {
                    questions.push(format!("[{}] user asked: {q}", m.seq));
                }
            }
            Role::Assistant if !first.is_empty() => {
                questions.clear();
                lines.push(Line { section: Section::Decisions, text: format!("[{}] {first}", m.seq) });
            }
            Role::System if !first.is_empty() => {
                lines.push(Line { section: Section::Goals, text: format!("[{}] {first}", m.seq) });
            }
            Role::Tool => {
                let id = msg.tool_call_id.as_deref().unwrap_or_default();
                let outcome = excerpt(&content, TOOL_EXCERPT_BYTES);
                match open.iter().position(|(call_id, _)| *call_id == id) {
                    Some(idx) => {
                        let (_, call) = open.remove(idx);
                        lines.push(Line { section: Section::Tools, text: format!("[{}] {call} -> {outcome}", m.seq) });
                    }
                    None => {
                        lines.push(Line { section: Section::Tools, text: format!("[{}] #{id} -> {outcome}", m.seq) })
                    }
                }
            }
            _ => {}
        }
        for call in &msg.tool_calls {
            let args = excerpt(&sanitize(&call.arguments), TOOL_EXCERPT_BYTES);
            open.push((call.id.as_str(), format!("{}({args})", call.name)));
        }
    }
    lines.extend(questions.into_iter().map(|text| Line { section: Section::Open, text }));
    for (id, call) in open {
        lines.push(Line { section: Section::Open, text: format!("{call} #{id} has no result yet") });
    }
    lines
}

/// The first line of `text` (already cleaned), whitespace-collapsed and cut to `max` bytes.
fn excerpt(text: &str, max: usize) -> String {
    let first = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    let collapsed: String = first.split_whitespace().collect::<Vec<_>>().join(" ");
    truncate_bytes(&collapsed, max)
}

/// The last sentence of `text` that ends in a question mark, if any.
fn last_question(text: &str) -> Option<String> {
    let end = text.rfind('?')?;
    let start = text[..end].rfind(['.', '!', '?', '\n']).map_or(0, |i| i + 1);
    let q = text[start..=end].trim();
    (!q.is_empty()).then(|| truncate_bytes(q, EXCERPT_BYTES))
}

/// Chooses the lines to keep within `max_bytes` and renders them by section, in original order.
fn fit(lines: Vec<Line>, focus: Option<&str>, max_bytes: usize) -> String {
    let focus_words: Vec<String> = focus
        .unwrap_or_default()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() > 2)
        .map(str::to_lowercase)
        .collect();
    let focused = |l: &Line| {
        let lower = l.text.to_lowercase();
        focus_words.iter().any(|w| lower.contains(w.as_str()))
    };
    let first_goal = lines.iter().position(|l| l.section == Section::Goals);
    // Keep order: focused lines, the first goal, then newest to oldest.
    let mut order: Vec<usize> = (0..lines.len()).collect();
    order.sort_by_key(|&i| (!focused(&lines[i]), Some(i) != first_goal, std::cmp::Reverse(i)));
    let overhead = 64; // section titles and focus header
    let mut budget = max_bytes.saturating_sub(overhead);
    let mut keep = vec![false; lines.len()];
    for i in order {
        let cost = lines[i].text.len() + 3;
        if cost <= budget {
            budget -= cost;
            keep[i] = true;
        }
    }
    let mut out = String::new();
    if let Some(f) = focus.filter(|f| !f.trim().is_empty()) {
        out.push_str(&format!("Focus: {}\n", truncate_bytes(f.trim(), 40)));
    }
    for section in [Section::Earlier, Section::Goals, Section::Decisions, Section::Tools, Section::Open] {
        let kept: Vec<&Line> =
            lines.iter().zip(&keep).filter(|(l, k)| **k && l.section == section).map(|(l, _)| l).collect();
        if kept.is_empty() {
            continue;
        }
        out.push_str(section.title());
        out.push('\n');
        for l in kept {
            out.push_str("- ");
            out.push_str(&l.text);
            out.push('\n');
        }
    }
    if out.trim().is_empty() {
        out.push_str("Nothing of note.\n");
    }
    truncate_bytes(out.trim_end(), max_bytes)
}
