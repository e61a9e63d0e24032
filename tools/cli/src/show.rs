//! `palimpsest show`: a session's working memory (summary + recent messages), now or as of a past
//! seq, in human form or as one JSON object.

use clap::Args;
use palimpsest::{Engine, Seq, Session, SessionId};
use serde::Serialize;

use crate::db::{DbArgs, OpenMode};
use crate::exit::{CliError, Outcome, Status};
use crate::history::{self, EventJson};
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
        that seq (time travel).\n\n\
        With --from, shows the log itself instead: every event (compacted messages, splices, episode\n\
        boundaries, extractions) from that seq, --limit of them; the last line says where the next\n\
        page starts. With --all, streams the whole log (from --from, or #1) in pages of at most\n\
        `limits.max_read_messages` events, so a session of any length is shown in bounded memory.",
    after_help = concat!(
        "Example:\n",
        "  palimpsest show --db /tmp/pal-demo --session demo-1-coding\n",
        "  palimpsest show --db /tmp/pal-demo --session demo-1-coding --at 12 --limit 5 --json\n",
        "  palimpsest show --db /tmp/pal-demo --session demo-1-coding --from 21 --limit 20\n",
        "  palimpsest show --db /tmp/pal-demo --session demo-1-coding --all --json > log.jsonl\n\n",
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
        "Log output (--from, --all): one block per event, messages as above, other events in brackets:\n",
        "  #<seq> [compaction: <n> messages up to #<seq> read as summary <hex>]\n",
        "  next page: --from <seq>                  (--from only, when the log goes on)\n",
        "With --json, --from prints one object {\"session\", \"last_seq\", \"events\": [...], \"next_from\": <seq> | null}\n",
        "and --all prints one object per event per line (JSON lines). An event is\n",
        "  {\"seq\", \"at_ms\", \"type\": \"message_appended\" | \"compaction_spliced\" | \"episode_boundary\" |\n",
        "   \"memories_extracted\" | \"session_deleted\", then its fields: \"message\" (as above, without seq),\n",
        "   \"upto\", \"summary_hash\", \"n_messages\", \"episode\", \"reason\", \"namespace\", \"from\",\n",
        "   \"n_memories\", \"n_events_removed\"}\n\n",
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
    #[arg(long, value_name = "SEQ", value_parser = clap::value_parser!(u64).range(1..), conflicts_with_all = ["from", "all"])]
    pub at: Option<u64>,

    /// Show the log's events from this seq (--limit of them) instead of the working memory.
    #[arg(long, value_name = "SEQ", value_parser = clap::value_parser!(u64).range(1..))]
    pub from: Option<u64>,

    /// Stream every event of the log (from --from, or #1), page by page, in bounded memory.
    #[arg(long)]
    pub all: bool,

    /// Print one JSON object instead of the human form.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: ShowArgs) -> Outcome {
    let engine = args.db.open_for_maintenance(OpenMode::Existing).await?;
    // `Engine::session` takes `TryInto<SessionId, Error = palimpsest::Error>`, which a `SessionId` is not.
    let session = engine.session(args.session.as_str())?;
    if args.all {
        return show_all(&engine, &session, &args).await;
    }
    if let Some(from) = args.from {
        return show_page(&session, Seq::new(from), &args).await;
    }
    let memory = match args.at {
        Some(at) => session.working_memory_at(Seq::new(at), args.limit).await,
        None => session.working_memory(args.limit).await,
    }
    .map_err(|e| CliError::in_db(e, &args.db.db))?;
    if args.json {
        output::print_json(&output::MemoryJson::new(&memory))?;
    } else {
        output::print_text(&output::memory_human(&memory))?;
    }
    Ok(Status::Ok)
}

/// The documented JSON form of one page of the log (see `show --help`).
#[derive(Serialize)]
struct PageJson<'a> {
    session: &'a str,
    last_seq: u64,
    events: Vec<EventJson<'a>>,
    next_from: Option<u64>,
}

/// `show --from SEQ`: one page of at most `--limit` events.
async fn show_page(session: &Session, from: Seq, args: &ShowArgs) -> Outcome {
    let last = history::last_seq(session, &args.db.db).await?;
    let events = session.history(from, args.limit).await.map_err(|e| CliError::in_db(e, &args.db.db))?;
    let next_from = events.last().map(|e| e.seq.next()).filter(|next| *next <= last).map(Seq::get);
    if args.json {
        let events = events.iter().map(EventJson::new).collect();
        output::print_json(&PageJson { session: args.session.as_str(), last_seq: last.get(), events, next_from })?;
    } else {
        let mut text: String = events.iter().map(history::event_human).collect();
        if let Some(next) = next_from {
            text.push_str(&format!("next page: --from {next}\n"));
        }
        output::print_text(&text)?;
    }
    Ok(Status::Ok)
}

/// `show --all`: every event from `--from` (or #1), streamed page by page.
async fn show_all(engine: &Engine, session: &Session, args: &ShowArgs) -> Outcome {
    let last = history::last_seq(session, &args.db.db).await?;
    let read_limit = usize::try_from(engine.config().limits.max_read_messages).unwrap_or(usize::MAX);
    let page = history::PAGE_EVENTS.min(read_limit);
    let from = Seq::new(args.from.unwrap_or(1));
    let json = args.json;
    history::stream(session, from, last, page, |events| {
        // One write per page: the page is what memory holds anyway.
        let mut text = String::new();
        for event in events {
            if json {
                let line = serde_json::to_string(&EventJson::new(event))
                    .map_err(|e| CliError::failed(format!("cannot render JSON: {e}")))?;
                text.push_str(&line);
                text.push('\n');
            } else {
                text.push_str(&history::event_human(event));
            }
        }
        output::print_text(&text)
    })
    .await?;
    Ok(Status::Ok)
}
