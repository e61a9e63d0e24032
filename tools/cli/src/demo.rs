//! `palimpsest demo`: plays scripted agent conversations (coding, travel, ops; see `script`) into
//! a fresh database, the way an agent runtime would append them; then compacts the first session
//! in the background while its conversation goes on, and shows its working memory (the summary
//! plus the recent messages).
//!
//! Sessions play concurrently (a few at a time), so their appends share the group commit as real
//! agents' would; each session's own appends stay in order. The messages are deterministic; where
//! the splice lands among the follow-up messages depends on timing, as it would for a real agent.

mod coding;
mod ops;
mod script;
mod travel;

use clap::Args;
use palimpsest::{CompactionOutcome, CompactionRequest, Engine, Error, Seq, Session};
use serde::Serialize;
use tokio::task::JoinSet;

use crate::compact;
use crate::db::{DbArgs, OpenMode};
use crate::exit::{CliError, Outcome, Status};
use crate::output;

/// Sessions played at once.
const CONCURRENT_SESSIONS: usize = 8;
/// Messages of the first session's working memory printed at the end (as `show`'s default).
const SHOWN_MESSAGES: usize = 20;

#[derive(Args, Debug)]
#[command(
    about = "Play realistic agent conversations into a new database, compact one while it goes on, show it",
    long_about = "Play realistic agent conversations into a new database: a coding, a travel and an ops\n\
        agent in turn (system prompt, user turns, assistant turns with tool calls, some of them two\n\
        calls in parallel, tool results, final answers), 40 to 60 messages per session, the same\n\
        content on every run. Then compact the first session in the background (the library's default\n\
        policy: keep the last `compaction.keep_last_messages` messages, 20 by default, and summarize\n\
        the rest with the embedded extractive summarizer) while its conversation goes on with a few\n\
        more turns, wait for the compaction, and print that session's working memory as `show` does:\n\
        the summary, then the most recent messages. Two lines end the output: what the compaction\n\
        did, and a summary of the run.\n\n\
        --db must name a directory that does not exist yet or is empty: demo refuses (exit 2) to\n\
        write next to anything else, so it never mixes with real data. Nothing goes over the network.",
    after_help = concat!(
        "Example:\n",
        "  palimpsest demo --db /tmp/pal-demo --sessions 6\n",
        "  palimpsest show --db /tmp/pal-demo --session demo-2-travel --json\n\n",
        "Sessions are named demo-<i>-<kind>, i = 1..=N, kind = coding, travel, ops, coding, ...\n",
        "The last two lines of output are:\n",
        "  compacted #1..#<upto> of demo-1-coding into a summary while <k> messages were appended\n",
        "  demo: <N> sessions, <M> messages, last seq <a>..<b>, database <DIR>\n",
        "where <k> depends on timing (the compaction never stops the conversation); when some follow-up\n",
        "messages land after the splice, the first line ends with `, and <j> more after it landed`.\n\n",
        "JSON output (--json): exactly one object, on one line:\n",
        "  {\"sessions\": <N>, \"messages\": <M>, \"database\": \"<DIR>\",\n",
        "   \"compacted_upto\": <seq> | null, \"appended_during_compaction\": <k>, \"appended_after\": <j>,\n",
        "   \"working_memory\": {the first session's working memory, as `show --json` prints it}}\n\n",
        crate::exit_codes_help!()
    )
)]
pub struct DemoArgs {
    #[command(flatten)]
    pub db: DbArgs,

    /// How many sessions to play (1 to 1000).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub sessions: u32,

    /// Print one JSON object instead of the human form.
    #[arg(long)]
    pub json: bool,
}

/// The documented JSON form (see `demo --help`).
#[derive(Serialize)]
struct DemoJson<'a> {
    sessions: u32,
    messages: u64,
    database: String,
    compacted_upto: Option<u64>,
    appended_during_compaction: u64,
    appended_after: u64,
    working_memory: output::MemoryJson<'a>,
}

/// What one session's playback wrote.
struct Played {
    idx: u32,
    n_messages: u64,
    last_seq: Seq,
}

pub async fn run(args: DemoArgs) -> Outcome {
    let engine = args.db.open(OpenMode::Fresh).await?;
    let mut tasks = JoinSet::new();
    let mut next_idx = 1;
    let mut n_messages = 0u64;
    let mut last_seqs = Vec::with_capacity(usize::try_from(args.sessions).unwrap_or(0));
    while next_idx <= args.sessions || !tasks.is_empty() {
        while next_idx <= args.sessions && tasks.len() < CONCURRENT_SESSIONS {
            tasks.spawn(play(engine.clone(), next_idx));
            next_idx += 1;
        }
        let Some(joined) = tasks.join_next().await else { break };
        let played = joined.map_err(|e| CliError::failed(format!("a demo session stopped: {e}")))??;
        n_messages += played.n_messages;
        if played.idx != 1 {
            last_seqs.push(played.last_seq);
        }
    }

    let first = engine.session(script::session_id(1).as_str())?;
    let background = compact_while_talking(&first).await?;
    n_messages += background.n_appended;
    let memory = first.working_memory(SHOWN_MESSAGES).await?;
    last_seqs.push(memory.last_seq);

    if args.json {
        output::print_json(&DemoJson {
            sessions: args.sessions,
            messages: n_messages,
            database: args.db.db.display().to_string(),
            compacted_upto: background.compacted_upto,
            appended_during_compaction: background.during,
            appended_after: background.n_appended - background.during,
            working_memory: output::MemoryJson::new(&memory),
        })?;
        return Ok(Status::Ok);
    }
    let (min_seq, max_seq) = (last_seqs.iter().min().copied(), last_seqs.iter().max().copied());
    let seqs = match (min_seq, max_seq) {
        (Some(min), Some(max)) if min != max => format!("{min}..{max}"),
        _ => format!("{}", memory.last_seq),
    };
    let summary = format!(
        "demo: {} session{}, {n_messages} messages, last seq {seqs}, database {}\n",
        args.sessions,
        if args.sessions == 1 { "" } else { "s" },
        args.db.db.display()
    );
    output::print_text(&format!("{}{}{summary}", output::memory_human(&memory), background.line))?;
    Ok(Status::Ok)
}

/// What the background compaction of the first session did.
struct Background {
    /// Follow-up messages appended (while the compaction ran, or after it).
    n_appended: u64,
    /// Of those, the ones appended while the compaction ran (all of them when it did not splice).
    during: u64,
    /// The splice's `upto`, when it spliced.
    compacted_upto: Option<u64>,
    /// One line saying so.
    line: String,
}

/// Compacts the first session in the background, with the library's default request (the policy
/// keeps the last `compaction.keep_last_messages` messages), while its conversation goes on: the
/// follow-up turns are appended as they would be by an agent that never waits for compaction.
async fn compact_while_talking(session: &Session) -> Result<Background, CliError> {
    let compaction = tokio::spawn({
        let session = session.clone();
        async move { session.compact(CompactionRequest::default()).await }
    });
    let max_batch = usize::try_from(session.engine().config().limits.max_batch_messages).unwrap_or(usize::MAX).max(1);
    let mut appended: Vec<u64> = Vec::new();
    for step in script::conversation(1).follow_up {
        for batch in step.chunks(max_batch) {
            let seqs = session.append_many(batch.to_vec()).await?;
            appended.extend(seqs.start.get()..seqs.end.get());
        }
    }
    let outcome =
        compaction.await.map_err(|e| CliError::failed(format!("the background compaction stopped: {e}")))??;
    let n_appended = appended.len() as u64;
    let (during, compacted_upto) = match &outcome {
        CompactionOutcome::Spliced { upto, seq, .. } => {
            (appended.iter().filter(|&&s| s < seq.get()).count() as u64, Some(upto.get()))
        }
        _ => (n_appended, None),
    };
    let line = match &outcome {
        CompactionOutcome::Spliced { upto, seq, .. } => {
            // The splice event's seq orders it among the appends: those before it were written while
            // the compaction was in flight.
            let during = appended.iter().filter(|&&s| s < seq.get()).count();
            let after = appended.len() - during;
            let later = if after == 0 { String::new() } else { format!(", and {after} more after it landed") };
            format!(
                "compacted #1..#{upto} of {} into a summary while {during} message{} {} appended{later}\n",
                session.id(),
                if during == 1 { "" } else { "s" },
                if during == 1 { "was" } else { "were" },
            )
        }
        other => format!("background compaction: {}", compact::outcome_human(session.id(), other)),
    };
    Ok(Background { n_appended, during, compacted_upto, line })
}

/// Appends session `idx`'s conversation step by step, as its agent would: each step (a user turn,
/// an assistant turn, the results of parallel tool calls) is one atomic `append_many`.
async fn play(engine: Engine, idx: u32) -> Result<Played, Error> {
    let conversation = script::conversation(idx);
    let session = engine.session(conversation.id.as_str())?;
    // Honour a config that allows smaller batches than a step.
    let max_batch = usize::try_from(engine.config().limits.max_batch_messages).unwrap_or(usize::MAX).max(1);
    let mut played = Played { idx, n_messages: 0, last_seq: Seq::ZERO };
    for step in conversation.steps {
        for batch in step.chunks(max_batch) {
            let seqs = session.append_many(batch.to_vec()).await?;
            played.n_messages += batch.len() as u64;
            played.last_seq = Seq::new(seqs.end.get() - 1);
        }
    }
    Ok(played)
}
