//! `palimpsest memories`: the memories background extraction wrote (the library's
//! `Engine::memories`), for one namespace or for the namespaces of every live session.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use clap::Args;
use palimpsest::{Engine, Memory, SessionId, namespace_of};
use serde::Serialize;

use crate::db::{DbArgs, OpenMode};
use crate::exit::{CliError, Outcome, Status};
use crate::output;

/// Memories shown when `--limit` is not given.
const DEFAULT_LIMIT: usize = 20;

/// Most namespaces gathered from the session list when `--namespace` is not given; past it the
/// output says so and `--namespace` narrows the question.
const MAX_NAMESPACES: usize = 1_000;

/// Session ids read per page while gathering namespaces.
const SESSION_PAGE: usize = 1_000;

#[derive(Args, Debug)]
#[command(
    about = "Print the memories background extraction wrote",
    long_about = "Print the memories background extraction wrote after splices and closed episodes: one\n\
        short statement each, in a namespace (the part of the session id before the first `:`, or\n\
        the whole id). Without --namespace, the namespaces of every live session are read, in order,\n\
        up to --limit memories in all. Nothing is written.",
    after_help = concat!(
        "Example:\n",
        "  palimpsest memories --db /tmp/pal-demo\n",
        "  palimpsest memories --db /tmp/agents --namespace user-42 --limit 50 --json\n\n",
        "Human output: one line per memory, then a count:\n",
        "  [<namespace>] <text>   (<session> #<from>..#<upto>)\n",
        "  <n> memories\n\n",
        "JSON output (--json): exactly one object, on one line:\n",
        "  {\"memories\": [{\"namespace\": \"...\", \"id\": \"<blake3 hex>\", \"text\": \"...\", \"session\": \"<id>\",\n",
        "                 \"from\": <seq>, \"upto\": <seq>, \"at_ms\": <number>}]}\n\n",
        "--limit over the config's limits.max_read_messages exits 2.\n\n",
        crate::exit_codes_help!()
    )
)]
pub struct MemoriesArgs {
    #[command(flatten)]
    pub db: DbArgs,

    /// Only this namespace.
    #[arg(long, value_name = "NAME")]
    pub namespace: Option<String>,

    /// Most memories to print, in all.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_LIMIT)]
    pub limit: usize,

    /// Print one JSON object instead of the human form.
    #[arg(long)]
    pub json: bool,
}

/// The documented JSON form of one memory (see `memories --help`).
#[derive(Serialize)]
struct MemoryJson<'a> {
    namespace: &'a str,
    id: &'a str,
    text: &'a str,
    session: &'a str,
    from: u64,
    upto: u64,
    at_ms: u64,
}

#[derive(Serialize)]
struct MemoriesJson<'a> {
    memories: Vec<MemoryJson<'a>>,
}

pub async fn run(args: MemoriesArgs) -> Outcome {
    let engine = args.db.open_for_maintenance(OpenMode::Existing).await?;
    let namespace = args.namespace.clone();
    let limit = args.limit;
    let memories = tokio::task::spawn_blocking(move || read(&engine, namespace, limit))
        .await
        .map_err(|e| CliError::failed(format!("reading the memories stopped: {e}")))??;
    if args.json {
        let memories = memories
            .iter()
            .map(|m| MemoryJson {
                namespace: &m.namespace,
                id: &m.id,
                text: &m.text,
                session: &m.session,
                from: m.from.get(),
                upto: m.upto.get(),
                at_ms: m.at_ms,
            })
            .collect();
        output::print_json(&MemoriesJson { memories })?;
    } else {
        output::print_text(&memories_human(&memories))?;
    }
    Ok(Status::Ok)
}

/// The memories of `namespace`, or of every live session's namespace, at most `limit` in all.
fn read(engine: &Engine, namespace: Option<String>, limit: usize) -> Result<Vec<Memory>, CliError> {
    let namespaces = match namespace {
        Some(ns) => vec![ns],
        None => live_namespaces(engine)?,
    };
    let mut out = Vec::new();
    for ns in namespaces {
        let left = limit - out.len();
        if left == 0 {
            break;
        }
        // On the blocking thread `run` reads from: the async read serves both backends.
        out.extend(tokio::runtime::Handle::current().block_on(engine.memories_async(&ns, left))?);
    }
    Ok(out)
}

/// The distinct namespaces of live sessions, in order, at most [`MAX_NAMESPACES`].
fn live_namespaces(engine: &Engine) -> Result<Vec<String>, CliError> {
    let page = SESSION_PAGE.min(usize::try_from(engine.config().limits.max_read_messages).unwrap_or(usize::MAX));
    let mut namespaces = BTreeSet::new();
    let mut after: Option<SessionId> = None;
    loop {
        // On the blocking thread `run` reads from: listing is async (it may ask a cluster).
        let ids = tokio::runtime::Handle::current().block_on(engine.list_sessions(after.as_ref(), page))?;
        for id in &ids {
            namespaces.insert(namespace_of(id).to_string());
            if namespaces.len() == MAX_NAMESPACES {
                tracing::warn!(
                    max = MAX_NAMESPACES,
                    "more namespaces than memories reads without --namespace; name one to see the rest"
                );
                return Ok(namespaces.into_iter().collect());
            }
        }
        match ids.last() {
            Some(last) if ids.len() == page => after = Some(last.clone()),
            _ => return Ok(namespaces.into_iter().collect()),
        }
    }
}

fn memories_human(memories: &[Memory]) -> String {
    let mut out = String::new();
    for m in memories {
        // `write!` into a String cannot fail.
        let _ = writeln!(
            out,
            "[{}] {}   ({} #{}..#{})",
            output::clean(&m.namespace),
            output::clean(&m.text).replace('\n', " "),
            m.session,
            m.from.next(),
            m.upto
        );
    }
    let n = memories.len();
    let _ = writeln!(out, "{n} memor{}", if n == 1 { "y" } else { "ies" });
    out
}
