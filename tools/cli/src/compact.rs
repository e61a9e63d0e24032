//! `palimpsest compact`: compacts one session now, with the embedded extractive summarizer or an
//! OpenAI-compatible endpoint, printing the library's progress on stderr while it runs and the
//! outcome on stdout. On a terminal the steps are lines above a bar counting the chunks; on a pipe
//! they are gathered into one summary line, printed when the compaction ends.

use std::pin::pin;

use clap::Args;
use palimpsest::{CompactionOutcome, CompactionRequest, Progress, Seq, SessionId, Stage, SummarizerKind};
use serde::Serialize;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::db::{DbArgs, OpenMode};
use crate::exit::{CliError, Outcome, Status};
use crate::output;
use crate::progress;

#[derive(Args, Debug)]
#[command(
    about = "Compact a session: summarize its old messages and splice the summary in",
    long_about = "Compact a session: summarize its old messages and splice the summary in, as the library's\n\
        `Session::compact` does for a running agent. Without --upto, the policy keeps the last\n\
        `compaction.keep_last_messages` messages (default 20) verbatim. The cut moves back if needed so\n\
        that no tool call is separated from its result. The original messages stay in the log.\n\n\
        The summarizer is the embedded extractive one (offline, deterministic) unless --openai-base-url\n\
        and --model name an OpenAI-compatible endpoint (the API key comes from the config's\n\
        `summarizer.openai.api_key` or the variable it names, OPENAI_API_KEY by default).\n\n\
        Progress goes to stderr: on a terminal, one line per step and a bar counting the chunks; on a\n\
        pipe or file, one summary line at the end. The outcome goes to stdout.",
    after_help = concat!(
        "Example:\n",
        "  palimpsest compact --db /tmp/pal-demo --session demo-2-travel\n",
        "  palimpsest compact --db /tmp/pal-demo --session demo-2-travel --upto 30 --focus \"hotel choice\" --json\n",
        "  palimpsest compact --db /tmp/pal-demo --session demo-3-ops \\\n",
        "      --openai-base-url http://127.0.0.1:8080 --model qwen2.5-7b-instruct\n\n",
        "Progress on a terminal's stderr, one line per step (and a bar while chunks run):\n",
        "  loaded 30 messages (#1..#32, 9214 bytes); cut at #32 (asked for #32)\n",
        "  strategy: 5 chunks (transcript over compaction.chunk_bytes = 24576)\n",
        "  merge: 5 chunk summaries\n",
        "  merge done in 800 ms\n",
        "  spliced: up to #32 at #53, blake3 <hex>\n",
        "When stderr is not a terminal, one line: the `loaded` and `strategy` steps joined by `; `.\n\n",
        "JSON output (--json): exactly one object, on one line:\n",
        "  {\n",
        "    \"session\": \"<id>\",\n",
        "    \"outcome\": \"spliced\" | \"already_running\" | \"nothing_to_compact\" | \"abandoned\",\n",
        "    \"requested_upto\": <seq> | null,   the cut asked for (or chosen by the policy)\n",
        "    \"upto\": <seq> | null,             the pair-safe cut used (spliced, abandoned)\n",
        "    \"summary_hash\": \"<blake3 hex>\" | null,   (spliced)\n",
        "    \"seq\": <seq> | null,              the splice event's seq (spliced)\n",
        "    \"n_messages\": <number> | null,    messages the summary replaced (spliced)\n",
        "    \"reason\": \"...\" | null            why nothing was spliced (nothing_to_compact, abandoned)\n",
        "  }\n\n",
        "Every outcome exits 0. A session that does not exist, a model error or a timeout exits 1 (the\n",
        "session is then unchanged; at most an orphan blob remains, see `palimpsest gc`). --upto past the\n",
        "end of the session, or a focus over 2048 bytes, exits 2.\n\n",
        crate::exit_codes_help!()
    )
)]
pub struct CompactArgs {
    #[command(flatten)]
    pub db: DbArgs,

    /// The session's id.
    #[arg(long, value_name = "ID")]
    pub session: SessionId,

    /// Compact up to this seq (moved back if needed to keep tool calls with their results);
    /// default: keep the last `compaction.keep_last_messages` messages.
    #[arg(long, value_name = "SEQ", value_parser = clap::value_parser!(u64).range(1..))]
    pub upto: Option<u64>,

    /// Free text steering what the summary keeps (at most 2048 bytes).
    #[arg(long, value_name = "TEXT")]
    pub focus: Option<String>,

    /// Summarize with this OpenAI-compatible endpoint (POST `URL/v1/chat/completions`).
    #[arg(
        long,
        value_name = "URL",
        requires = "model",
        help = "Summarize with this OpenAI-compatible endpoint (POST <URL>/v1/chat/completions)"
    )]
    pub openai_base_url: Option<String>,

    /// The model to ask at --openai-base-url.
    #[arg(long, value_name = "NAME", requires = "openai_base_url")]
    pub model: Option<String>,

    /// Print one JSON object instead of the human form.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: CompactArgs) -> Outcome {
    let mut config = args.db.config()?;
    if let (Some(base_url), Some(model)) = (&args.openai_base_url, &args.model) {
        config.summarizer.kind = SummarizerKind::Openai;
        config.summarizer.openai.base_url.clone_from(base_url);
        config.summarizer.openai.model.clone_from(model);
    }
    let engine = args.db.open_with(config, OpenMode::Existing).await?;
    let session = engine.session(args.session.as_str())?;
    let request = CompactionRequest { upto: args.upto.map(Seq::new), focus: args.focus.clone() };

    // Subscribe before starting, so no step is missed.
    let mut progress = engine.subscribe_progress();
    let mut reporter = Reporter::new(&args.session);
    let mut compaction = pin!(session.compact(request));
    let result = loop {
        tokio::select! {
            result = &mut compaction => break result,
            item = progress.recv() => match item {
                Ok(item) => reporter.print_progress(&item),
                Err(RecvError::Lagged(n)) => reporter.dropped(n),
                // The engine (and with it the sender) lives until the end of this function.
                Err(RecvError::Closed) => {}
            },
        }
    };
    // Steps published just before the compaction returned are still queued.
    loop {
        match progress.try_recv() {
            Ok(item) => reporter.print_progress(&item),
            Err(TryRecvError::Lagged(n)) => reporter.dropped(n),
            Err(TryRecvError::Empty | TryRecvError::Closed) => break,
        }
    }
    reporter.finish();
    let outcome = result.map_err(|e| CliError::in_db(e, &args.db.db))?;
    if args.json {
        output::print_json(&OutcomeJson::new(&args.session, &outcome))?;
    } else {
        output::print_text(&outcome_human(&args.session, &outcome))?;
    }
    Ok(Status::Ok)
}

/// Where this session's compaction steps go: on a terminal, one line per step above a bar that
/// counts the chunks; elsewhere, the `loaded` and `strategy` lines kept for one summary line.
struct Reporter<'a> {
    session: &'a SessionId,
    bar: Option<progress::Bar>,
    summary: Vec<String>,
}

impl<'a> Reporter<'a> {
    fn new(session: &'a SessionId) -> Self {
        Self { session, bar: None, summary: Vec::new() }
    }

    /// One human line per step of this session's compaction. `Abandoned` is left out: the outcome
    /// (or the error) printed at the end says the same thing. Chunk steps move the bar instead.
    fn print_progress(&mut self, item: &Progress) {
        if &item.session != self.session {
            return;
        }
        match &item.stage {
            Stage::Strategy { n_chunks, .. } if *n_chunks > 1 => {
                self.bar = Some(progress::Bar::counting("chunks", *n_chunks, "done"));
            }
            Stage::ChunkDone { .. } => {
                if let Some(bar) = &self.bar {
                    bar.inc(1);
                }
            }
            _ => {}
        }
        let Some(line) = stage_line(&item.stage) else { return };
        if !progress::visible() {
            if matches!(item.stage, Stage::Loaded { .. } | Stage::Strategy { .. }) {
                self.summary.push(line);
            }
        } else if !matches!(item.stage, Stage::ChunkDone { ok: true, .. }) {
            progress::suspend(|| eprintln!("{line}"));
        }
    }

    /// Progress items the broadcast channel dropped (the reader fell behind).
    fn dropped(&mut self, n: u64) {
        if progress::visible() {
            progress::suspend(|| eprintln!("({n} progress items were dropped)"));
        }
    }

    /// Clears the bar, or prints the one summary line.
    fn finish(self) {
        drop(self.bar);
        if !self.summary.is_empty() {
            eprintln!("{}", self.summary.join("; "));
        }
    }
}

fn stage_line(stage: &Stage) -> Option<String> {
    Some(match stage {
        Stage::Loaded { base, requested_upto, upto, n_messages, n_bytes } => format!(
            "loaded {n_messages} message{} (#{}..#{upto}, {n_bytes} bytes); cut at #{upto} \
             (asked for #{requested_upto})",
            plural(*n_messages),
            base.next(),
        ),
        Stage::Strategy { n_chunks, reason } if *n_chunks <= 1 => format!("strategy: single pass ({reason})"),
        Stage::Strategy { n_chunks, reason } => format!("strategy: {n_chunks} chunks ({reason})"),
        Stage::ChunkDone { index, n_chunks, duration_ms, ok: true } => {
            format!("chunk {}/{n_chunks} done in {duration_ms} ms", index + 1)
        }
        Stage::ChunkDone { index, n_chunks, duration_ms, ok: false } => {
            format!("chunk {}/{n_chunks} failed after {duration_ms} ms", index + 1)
        }
        Stage::Retry { index, n_chunks, attempt, wait_ms, status, cause, concurrency } => format!(
            "{} retry {attempt} after {:.1} s ({}), {concurrency} in flight",
            index.map_or("merge".to_string(), |i| format!("chunk {}/{n_chunks}", i + 1)),
            *wait_ms as f64 / 1000.0,
            status.map_or(cause.clone(), |s| s.to_string()),
        ),
        Stage::MergeStarted { n_chunks } => format!("merge: {n_chunks} chunk summaries"),
        Stage::MergeDone { duration_ms, fell_back: false } => format!("merge done in {duration_ms} ms"),
        Stage::MergeDone { duration_ms, fell_back: true } => {
            format!("merge failed after {duration_ms} ms; using the chunk summaries, concatenated")
        }
        Stage::Spliced { upto, summary_hash, seq } => {
            format!("spliced: up to #{upto} at #{seq}, blake3 {summary_hash}")
        }
        Stage::Abandoned { .. } => return None,
    })
}

/// The documented JSON form of an outcome (see `compact --help`).
#[derive(Serialize)]
struct OutcomeJson<'a> {
    session: &'a str,
    outcome: &'static str,
    requested_upto: Option<u64>,
    upto: Option<u64>,
    summary_hash: Option<String>,
    seq: Option<u64>,
    n_messages: Option<u64>,
    reason: Option<&'a str>,
}

impl<'a> OutcomeJson<'a> {
    fn new(session: &'a SessionId, outcome: &'a CompactionOutcome) -> Self {
        let mut json = Self {
            session: session.as_str(),
            outcome: "",
            requested_upto: None,
            upto: None,
            summary_hash: None,
            seq: None,
            n_messages: None,
            reason: None,
        };
        match outcome {
            CompactionOutcome::Spliced { requested_upto, upto, summary_hash, seq, n_messages } => {
                json.outcome = "spliced";
                json.requested_upto = Some(requested_upto.get());
                json.upto = Some(upto.get());
                json.summary_hash = Some(summary_hash.to_hex());
                json.seq = Some(seq.get());
                json.n_messages = Some(*n_messages);
            }
            CompactionOutcome::AlreadyRunning => json.outcome = "already_running",
            CompactionOutcome::NothingToCompact { requested_upto, reason } => {
                json.outcome = "nothing_to_compact";
                json.requested_upto = requested_upto.map(Seq::get);
                json.reason = Some(reason);
            }
            CompactionOutcome::Abandoned { requested_upto, upto, reason } => {
                json.outcome = "abandoned";
                json.requested_upto = Some(requested_upto.get());
                json.upto = Some(upto.get());
                json.reason = Some(reason);
            }
        }
        json
    }
}

/// The human form of an outcome: one line.
pub fn outcome_human(session: &SessionId, outcome: &CompactionOutcome) -> String {
    match outcome {
        CompactionOutcome::Spliced { requested_upto, upto, summary_hash, seq, n_messages } => {
            let asked = if requested_upto == upto {
                String::new()
            } else {
                format!("; asked for #{requested_upto}, moved back to keep tool calls with their results")
            };
            format!(
                "spliced {session}: {n_messages} message{} up to #{upto} are now read as summary {summary_hash} \
                 (splice event #{seq}{asked})\n",
                plural(*n_messages)
            )
        }
        CompactionOutcome::AlreadyRunning => {
            format!("a compaction of {session} is already running; nothing was done\n")
        }
        CompactionOutcome::NothingToCompact { reason, .. } => format!("nothing to compact in {session}: {reason}\n"),
        CompactionOutcome::Abandoned { upto, reason, .. } => format!(
            "abandoned the compaction of {session} up to #{upto}: {reason}; the session is unchanged \
             (at most an orphan blob remains: see `palimpsest gc`)\n"
        ),
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use palimpsest::SummaryHash;

    use super::*;

    #[test]
    fn stages_read_as_one_line_each() {
        let chunk = Stage::ChunkDone { index: 1, n_chunks: 5, duration_ms: 1200, ok: true };
        assert_eq!(stage_line(&chunk).as_deref(), Some("chunk 2/5 done in 1200 ms"));
        let single = Stage::Strategy { n_chunks: 1, reason: "fits".to_string() };
        assert_eq!(stage_line(&single).as_deref(), Some("strategy: single pass (fits)"));
        assert_eq!(stage_line(&Stage::Abandoned { reason: "x".to_string() }), None);
        let retry = Stage::Retry {
            index: Some(16),
            n_chunks: 506,
            attempt: 2,
            wait_ms: 1_200,
            status: Some(429),
            cause: "HTTP 429".to_string(),
            concurrency: 4,
        };
        assert_eq!(stage_line(&retry).as_deref(), Some("chunk 17/506 retry 2 after 1.2 s (429), 4 in flight"));
    }

    #[test]
    fn json_outcome_fills_only_what_the_outcome_has() {
        let id = SessionId::new("s").expect("valid id");
        let hash = SummaryHash::of("sum");
        let spliced = CompactionOutcome::Spliced {
            requested_upto: Seq::new(9),
            upto: Seq::new(7),
            summary_hash: hash,
            seq: Seq::new(12),
            n_messages: 7,
        };
        let v = serde_json::to_value(OutcomeJson::new(&id, &spliced)).expect("serializable");
        assert_eq!(v["outcome"], "spliced");
        assert_eq!((v["requested_upto"].as_u64(), v["upto"].as_u64()), (Some(9), Some(7)));
        assert_eq!(v["summary_hash"], hash.to_hex());
        assert!(v["reason"].is_null());
        let none = CompactionOutcome::NothingToCompact { requested_upto: None, reason: "few".to_string() };
        let v = serde_json::to_value(OutcomeJson::new(&id, &none)).expect("serializable");
        assert_eq!(v["outcome"], "nothing_to_compact");
        assert!(v["requested_upto"].is_null() && v["upto"].is_null() && v["summary_hash"].is_null());
        assert_eq!(v["reason"], "few");
    }
}
