//! `palimpsest show`: a session's working memory (summary + recent messages), now or as of a past
//! seq, in human form or as one JSON object.

use clap::Args;
use palimpsest::{Error, Seq, SessionId};

use crate::db::{DbArgs, OpenMode};
use crate::exit::{CliError, Outcome, Status};
use crate::output;

/// Messages shown when `--limit` is not given.
const DEFAULT_LIMIT: usize = 20;

#[derive(Args, Debug)]
#[command(
    about = "Print a session's working memory: its summary and most recent messages",
    long_about = "Print a session's working memory: the latest summary (if the session was compacted)\n\
        and the most recent messages after it, oldest first, exactly as an agent is served them.\n\
        A tool result whose call falls outside the window is left out, so the window may hold\n\
        fewer than --limit messages. With --at, shows the working memory as it was right after\n\
        that seq (time travel).",
    after_help = concat!(
        "Example:\n",
        "  palimpsest show --db /tmp/pal-demo --session demo-1-coding\n",
        "  palimpsest show --db /tmp/pal-demo --session demo-1-coding --at 12 --limit 5 --json\n\n",
        "Human output:\n",
        "  session <id>, last seq <n>, <n> messages\n",
        "  summary up to #<seq>, blake3 <hex>:        (only when compacted)\n",
        "      <summary text>\n",
        "  <n> messages in working memory, #<first>..#<last>:\n",
        "  #<seq> <role>: <content>\n",
        "      -> <name>(<arguments>) [<id>]        (one line per tool call)\n",
        "  #<seq> tool: <- [<tool_call_id>] <content>\n\n",
        "JSON output (--json): exactly one object, on one line:\n",
        "  {\n",
        "    \"session\": \"<id>\",\n",
        "    \"last_seq\": <number>,             the last event the view includes\n",
        "    \"n_messages\": <number> | null,    messages in the session; null with --at\n",
        "    \"summary\": null | {\"upto\": <seq>, \"hash\": \"<blake3 hex>\", \"text\": \"...\"},\n",
        "    \"messages\": [                     oldest first\n",
        "      {\"seq\": <number>, \"role\": \"system\"|\"user\"|\"assistant\"|\"tool\", \"content\": \"...\",\n",
        "       \"tool_calls\": [{\"id\": \"...\", \"name\": \"...\", \"arguments\": \"...\"}],  only when present\n",
        "       \"tool_call_id\": \"...\",                                         only on tool results\n",
        "       \"created_at_ms\": <number>}\n",
        "    ]\n",
        "  }\n\n",
        "A session that does not exist (or was deleted) exits 1; a seq outside the session's log exits 2.\n\n",
        crate::exit_codes_help!()
    )
)]
pub struct ShowArgs {
    #[command(flatten)]
    pub db: DbArgs,

    /// The session's id.
    #[arg(long, value_name = "ID")]
    pub session: SessionId,

    /// Most messages to show after the summary.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_LIMIT)]
    pub limit: usize,

    /// Show the working memory as it was right after this seq, instead of now.
    #[arg(long, value_name = "SEQ", value_parser = clap::value_parser!(u64).range(1..))]
    pub at: Option<u64>,

    /// Print one JSON object instead of the human form.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: ShowArgs) -> Outcome {
    let engine = args.db.open_for_maintenance(OpenMode::Existing).await?;
    // `Engine::session` takes `TryInto<SessionId, Error = palimpsest::Error>`, which a `SessionId` is not.
    let session = engine.session(args.session.as_str())?;
    let memory = match args.at {
        Some(at) => session.working_memory_at(Seq::new(at), args.limit).await,
        None => session.working_memory(args.limit).await,
    }
    .map_err(|e| match e {
        Error::NotFound { .. } => CliError::failed(format!("{e} in {}", args.db.db.display())),
        other => CliError::from(other),
    })?;
    if args.json {
        output::print_json(&output::MemoryJson::new(&memory))?;
    } else {
        output::print_text(&output::memory_human(&memory))?;
    }
    Ok(Status::Ok)
}
