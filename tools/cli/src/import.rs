//! `palimpsest import`: appends a session's events from JSON lines (the library's
//! `Session::import_jsonl`), from a file or stdin, all or nothing.

use std::io::Read;
use std::path::PathBuf;

use clap::Args;
use palimpsest::{Error, SessionId};
use serde::Serialize;

use crate::db::{DbArgs, OpenMode};
use crate::exit::{CliError, Outcome, Status};
use crate::output;
use crate::progress;

/// Largest input read, bytes: bigger files are refused before anything is opened.
const MAX_IMPORT_BYTES: u64 = 256 << 20;

#[derive(Args, Debug)]
#[command(
    about = "Append a session's events from JSON lines, all or nothing",
    long_about = "Append events to a session from JSON lines: OpenAI chat messages (`role`, `content`,\n\
        `tool_calls`, `tool_call_id`, optional `created_at_ms`, `metadata`, `seq`), or the output of\n\
        `palimpsest export` (whose splice lines can only go into a session that is still empty).\n\
        Every line is checked as an append would be (tool results must answer earlier calls, ...)\n\
        and the whole file is applied in one atomic batch, or nothing is.\n\n\
        FILE `-` reads stdin. Files over 256 MiB are refused. The database is created if --db names\n\
        a missing or empty directory.",
    after_help = concat!(
        "Example:\n",
        "  palimpsest export --db /tmp/pal-demo --session demo-1-coding --out coding.jsonl\n",
        "  palimpsest import --db /tmp/pal-copy --session demo-1-coding coding.jsonl\n",
        "  cat chat.jsonl | palimpsest import --db /tmp/pal-copy --session chat-7 -\n\n",
        "Output, one line:\n",
        "  imported <n> events into <session>: #<first>..#<last>\n",
        "JSON output (--json): {\"session\": \"<id>\", \"n_events\": <n>, \"first_seq\": <seq>, \"last_seq\": <seq>}\n\n",
        "A bad line exits 1 naming it (`import line <n>: <reason>`) and imports nothing. An unreadable\n",
        "or too large file exits 2.\n\n",
        crate::exit_codes_help!()
    )
)]
pub struct ImportArgs {
    #[command(flatten)]
    pub db: DbArgs,

    /// The session's id.
    #[arg(long, value_name = "ID")]
    pub session: SessionId,

    /// The JSON-lines file to read, or `-` for stdin.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Print one JSON object instead of the human line.
    #[arg(long)]
    pub json: bool,
}

/// The documented JSON form (see `import --help`).
#[derive(Serialize)]
struct ImportedJson<'a> {
    session: &'a str,
    n_events: u64,
    first_seq: u64,
    last_seq: u64,
}

pub async fn run(args: ImportArgs) -> Outcome {
    let config = args.db.config()?;
    let (name, text) = read_input(&args.file)?;
    let engine = args.db.open_with(config, OpenMode::ExistingOrNew).await?;
    let session = engine.session(args.session.as_str())?;
    let bar = progress::Bar::busy(&format!("import {} lines", text.lines().count()));
    let report = session.import_jsonl(&text).await.map_err(|e| match e {
        Error::InvalidImport { .. } => CliError::failed(format!("{name}: {e}; nothing was imported")),
        other => CliError::from(other),
    })?;
    drop(bar);
    if args.json {
        return output::print_json(&ImportedJson {
            session: args.session.as_str(),
            n_events: report.n_events,
            first_seq: report.first_seq.get(),
            last_seq: report.last_seq.get(),
        })
        .map(|()| Status::Ok);
    }
    output::print_text(&format!(
        "imported {} event{} into {}: #{}..#{}\n",
        report.n_events,
        if report.n_events == 1 { "" } else { "s" },
        args.session,
        report.first_seq,
        report.last_seq
    ))?;
    Ok(Status::Ok)
}

/// Reads at most [`MAX_IMPORT_BYTES`] of `file` (`-`: stdin) as UTF-8. Returns the name to use in
/// messages and the text. Unreadable or too large: exit 2; not UTF-8: exit 1 naming the line.
fn read_input(file: &PathBuf) -> Result<(String, String), CliError> {
    let (name, reader): (String, Box<dyn Read>) = if file.as_os_str() == "-" {
        ("stdin".to_string(), Box::new(std::io::stdin().lock()))
    } else {
        let opened = std::fs::File::open(file)
            .map_err(|e| CliError::unusable(format!("cannot read {}: {e}", file.display())))?;
        (file.display().to_string(), Box::new(opened))
    };
    let mut bytes = Vec::new();
    reader
        .take(MAX_IMPORT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| CliError::unusable(format!("cannot read {name}: {e}")))?;
    if bytes.len() as u64 > MAX_IMPORT_BYTES {
        return Err(CliError::unusable(format!(
            "{name} is over {} MiB; split it into several imports",
            MAX_IMPORT_BYTES >> 20
        )));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        CliError::failed(format!("{name}: import line {line}: not UTF-8; nothing was imported"))
    })?;
    Ok((name, text))
}
