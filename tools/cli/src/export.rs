//! `palimpsest export`: every event of one session as JSON lines (the library's
//! `Session::export_jsonl`), on stdout or into a file.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use palimpsest::{Error, SessionId};
use serde::Serialize;

use crate::db::{DbArgs, OpenMode};
use crate::exit::{CliError, Outcome, Status};
use crate::output;
use crate::progress;

#[derive(Args, Debug)]
#[command(
    about = "Write every event of a session as JSON lines",
    long_about = "Write every event of a session, compacted messages and splices included, as JSON lines\n\
        in seq order: one OpenAI-shaped chat message per line (`role`, `content`, `tool_calls`,\n\
        `tool_call_id`, `created_at_ms`, `metadata`), and a `type` field on other events\n\
        (`compaction_spliced` carries the summary's full text). Every line has `seq` and `at_ms`.\n\
        `palimpsest import` reads the same format back.\n\n\
        Writes to stdout unless --out names a file; the file is written in full and then renamed into\n\
        place, so a failed export never leaves half a file behind.",
    after_help = concat!(
        "Example:\n",
        "  palimpsest export --db /tmp/pal-demo --session demo-1-coding > coding.jsonl\n",
        "  palimpsest export --db /tmp/pal-demo --session demo-1-coding --out coding.jsonl\n",
        "  palimpsest import --db /tmp/pal-copy --session demo-1-coding coding.jsonl\n\n",
        "With --out, one line on stdout when done:\n",
        "  exported <n> events of <session> to <FILE>\n",
        "or with --json: {\"session\": \"<id>\", \"n_events\": <n>, \"out\": \"<FILE>\"}. Without --out, --json\n",
        "changes only the form of errors (stdout is the JSON lines).\n\n",
        "A session that does not exist (or was deleted) exits 1.\n\n",
        crate::exit_codes_help!()
    )
)]
pub struct ExportArgs {
    #[command(flatten)]
    pub db: DbArgs,

    /// The session's id.
    #[arg(long, value_name = "ID")]
    pub session: SessionId,

    /// Write to this file (replaced if it exists) instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,

    /// With --out, print the closing line as one JSON object (and errors as JSON).
    #[arg(long)]
    pub json: bool,
}

/// The documented JSON form of the closing line (see `export --help`).
#[derive(Serialize)]
struct ExportedJson<'a> {
    session: &'a str,
    n_events: u64,
    out: String,
}

pub async fn run(args: ExportArgs) -> Outcome {
    let engine = args.db.open_for_maintenance(OpenMode::Existing).await?;
    let session = engine.session(args.session.as_str())?;
    let not_found = |e: Error| CliError::in_db(e, &args.db.db);
    let n_events = session.head().await.map_err(not_found)?.map_or(0, |h| h.last_seq().get());
    let bar = progress::Bar::counting("export", n_events, "events");
    let Some(path) = &args.out else {
        let mut out = Recording { inner: std::io::stdout().lock(), error: None, bar: &bar };
        let exported = session.export_jsonl(&mut out).await;
        // The library wraps a failed write in its own error; report the stdout error as `show`
        // does (a closed pipe is a quiet stop).
        if let Some(e) = out.error.take() {
            return Err(CliError::stdout(&e));
        }
        exported.map_err(not_found)?;
        return Ok(Status::Ok);
    };
    let tmp = temporary_path(path)?;
    let file =
        std::fs::File::create(&tmp).map_err(|e| CliError::unusable(format!("cannot create {}: {e}", tmp.display())))?;
    let mut out = Counting { inner: std::io::BufWriter::new(file), bar: &bar };
    let exported = match session.export_jsonl(&mut out).await {
        Ok(n) => out
            .inner
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|file| file.sync_all())
            .and_then(|()| std::fs::rename(&tmp, path))
            .map(|()| n)
            .map_err(|e| CliError::failed(format!("cannot write {}: {e}", path.display()))),
        Err(e) => Err(not_found(e)),
    };
    if exported.is_err() {
        // Best effort: the export already failed, and the leftover is a temporary file.
        let _ = std::fs::remove_file(&tmp);
    }
    drop(bar);
    let n = exported?;
    if args.json {
        return output::print_json(&ExportedJson {
            session: args.session.as_str(),
            n_events: n,
            out: path.display().to_string(),
        })
        .map(|()| Status::Ok);
    }
    output::print_text(&format!(
        "exported {n} event{} of {} to {}\n",
        if n == 1 { "" } else { "s" },
        args.session,
        path.display()
    ))?;
    Ok(Status::Ok)
}

/// `dir/.name.tmp-<pid>` next to `path`, so the final rename stays on one file system.
fn temporary_path(path: &Path) -> Result<PathBuf, CliError> {
    let name =
        path.file_name().ok_or_else(|| CliError::unusable(format!("--out {} does not name a file", path.display())))?;
    Ok(path.with_file_name(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id())))
}

/// A writer that counts the lines (events) written on the progress bar.
struct Counting<'a, W> {
    inner: W,
    bar: &'a progress::Bar,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bar.inc(buf[..n].iter().filter(|&&b| b == b'\n').count() as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A writer that remembers its first error, which the library's export turns into text, and
/// counts the lines written on the progress bar.
struct Recording<'a, W> {
    inner: W,
    error: Option<std::io::Error>,
    bar: &'a progress::Bar,
}

impl<W: Write> Recording<'_, W> {
    fn record<T>(&mut self, result: std::io::Result<T>) -> std::io::Result<T> {
        result.inspect_err(|e| {
            self.error.get_or_insert_with(|| std::io::Error::new(e.kind(), e.to_string()));
        })
    }
}

impl<W: Write> Write for Recording<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let result = self.inner.write(buf);
        if let Ok(n) = &result {
            self.bar.inc(buf[..*n].iter().filter(|&&b| b == b'\n').count() as u64);
        }
        self.record(result)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let result = self.inner.flush();
        self.record(result)
    }
}
