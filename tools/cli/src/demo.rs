//! `palimpsest demo`: plays scripted agent conversations (coding, travel, ops; see `script`) into
//! a fresh database, the way an agent runtime would append them, then shows the first session's
//! working memory.
//!
//! Sessions play concurrently (a few at a time), so their appends share the group commit as real
//! agents' would; each session's own appends stay in order. The content is deterministic.

mod coding;
mod ops;
mod script;
mod travel;

use clap::Args;
use palimpsest::{Engine, Error, Seq};
use tokio::task::JoinSet;

use crate::db::{DbArgs, OpenMode};
use crate::exit::{CliError, Outcome, Status};
use crate::output;

/// Sessions played at once.
const CONCURRENT_SESSIONS: usize = 8;
/// Messages of the first session's working memory printed at the end (as `show`'s default).
const SHOWN_MESSAGES: usize = 20;

#[derive(Args, Debug)]
#[command(
    about = "Play a realistic agent conversation into a new database and show its working memory",
    long_about = "Play realistic agent conversations into a new database: a coding, a travel and an ops\n\
        agent in turn (system prompt, user turns, assistant turns with tool calls, some of them two\n\
        calls in parallel, tool results, final answers), 40 to 60 messages per session, the same\n\
        content on every run. Then print the first session's working memory as `show` does, and a\n\
        one-line summary.\n\n\
        --db must name a directory that does not exist yet or is empty: demo refuses (exit 2) to\n\
        write next to anything else, so it never mixes with real data. Nothing goes over the network.",
    after_help = concat!(
        "Example:\n",
        "  palimpsest demo --db /tmp/pal-demo --sessions 6\n",
        "  palimpsest show --db /tmp/pal-demo --session demo-2-travel --json\n\n",
        "Sessions are named demo-<i>-<kind>, i = 1..=N, kind = coding, travel, ops, coding, ...\n",
        "The last line of output is:\n",
        "  demo: <N> sessions, <M> messages, last seq <a>..<b>, database <DIR>\n\n",
        crate::exit_codes_help!()
    )
)]
pub struct DemoArgs {
    #[command(flatten)]
    pub db: DbArgs,

    /// How many sessions to play (1 to 1000).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub sessions: u32,
}

/// What one session's playback wrote.
struct Played {
    n_messages: u64,
    last_seq: Seq,
}

pub async fn run(args: DemoArgs) -> Outcome {
    let engine = args.db.open(OpenMode::Fresh).await?;
    let mut tasks = JoinSet::new();
    let mut next_idx = 1;
    let (mut n_messages, mut min_seq, mut max_seq) = (0u64, Seq::new(u64::MAX), Seq::ZERO);
    while next_idx <= args.sessions || !tasks.is_empty() {
        while next_idx <= args.sessions && tasks.len() < CONCURRENT_SESSIONS {
            tasks.spawn(play(engine.clone(), next_idx));
            next_idx += 1;
        }
        let Some(joined) = tasks.join_next().await else { break };
        let played = joined.map_err(|e| CliError::failed(format!("a demo session stopped: {e}")))??;
        n_messages += played.n_messages;
        min_seq = min_seq.min(played.last_seq);
        max_seq = max_seq.max(played.last_seq);
    }
    let first = engine.session(script::session_id(1).as_str())?;
    let memory = first.working_memory(SHOWN_MESSAGES).await?;
    let seqs = if min_seq == max_seq { format!("{max_seq}") } else { format!("{min_seq}..{max_seq}") };
    let summary = format!(
        "demo: {} session{}, {n_messages} messages, last seq {seqs}, database {}\n",
        args.sessions,
        if args.sessions == 1 { "" } else { "s" },
        args.db.db.display()
    );
    output::print_text(&format!("{}{summary}", output::memory_human(&memory)))?;
    Ok(Status::Ok)
}

/// Appends session `idx`'s conversation step by step, as its agent would: each step (a user turn,
/// an assistant turn, the results of parallel tool calls) is one atomic `append_many`.
async fn play(engine: Engine, idx: u32) -> Result<Played, Error> {
    let conversation = script::conversation(idx);
    let session = engine.session(conversation.id.as_str())?;
    // Honour a config that allows smaller batches than a step.
    let max_batch = usize::try_from(engine.config().limits.max_batch_messages).unwrap_or(usize::MAX).max(1);
    let mut played = Played { n_messages: 0, last_seq: Seq::ZERO };
    for step in conversation.steps {
        for batch in step.chunks(max_batch) {
            let seqs = session.append_many(batch.to_vec()).await?;
            played.n_messages += batch.len() as u64;
            played.last_seq = Seq::new(seqs.end.get() - 1);
        }
    }
    Ok(played)
}
