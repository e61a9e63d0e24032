//! `palimpsest`: the operator's command-line tool, a thin shell over the library's public API.
//! It never decodes keys or events itself.
//!
//! Map of the tool:
//! - `main`: argument parsing, dispatch, draining background work, and turning outcomes into exit codes.
//! - `exit`: [`exit::Status`] and [`exit::CliError`], the exit-code contract (0, 1, 2).
//! - `db`: [`db::DbArgs`], the `--db`/`--config` options every command takes, and opening the engine.
//! - `output`: stdout writing, JSON printing, the human and JSON forms of working memory.
//! - `demo`: `palimpsest demo`, scripted agent conversations played into a fresh database, one of
//!   them compacted in the background while it goes on.
//! - `show`: `palimpsest show`, a session's working memory, now or as of a past seq.
//! - `compact`: `palimpsest compact`, one session compacted now, with progress.
//! - `audit`: `palimpsest audit`, replay and invariant checks; the report's human and JSON forms.
//! - `rebuild`: `palimpsest rebuild`, stored views rewritten from the log, then audited.
//! - `gc`: `palimpsest gc`, orphan summary blobs listed and removed.
//! - `stats`: `palimpsest stats`, counts and sizes.
//! - `export`, `import`: `palimpsest export` and `import`, a session as JSON lines and back.
//! - `serve`: `palimpsest serve`, the agent-memory-server compatible HTTP service (`palimpsest-server`).
//! - `delete`: `palimpsest delete`, a session deleted (after a confirmation), its purge awaited.
//! - `memories`: `palimpsest memories`, the memories background extraction wrote.
//! - `guards`: `palimpsest guards`, the guard counters and pending purges.
//! - `completions`: `palimpsest completions SHELL`, a shell completion script.
//! - `history`: the event lines of `show --from` and `show --all`.
//! - `progress`: bars on a terminal, nothing on a pipe; `log`: the `tracing` subscriber.
//!
//! Adding a command: write `foo.rs` with `FooArgs` (clap `Args`, with `#[command(flatten)] db: DbArgs`,
//! a `json: bool` flag, an `about` and an `after_help` that holds an `Example:` block) and
//! `async fn run(FooArgs) -> Outcome`, then add one variant to [`Command`] and one arm to
//! [`Command::run`] and to [`Command::json`].

mod audit;
mod compact;
mod completions;
mod db;
mod delete;
mod demo;
mod exit;
mod export;
mod gc;
mod guards;
mod history;
mod import;
mod log;
mod memories;
mod output;
mod progress;
mod rebuild;
mod serve;
mod show;
mod stats;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::exit::{CliError, Outcome};

/// The exit-code contract, shown in the help of the tool and of every command.
macro_rules! exit_codes_help {
    () => {
        "Exit codes:
  0  success
  1  the command ran and found or produced a failure (e.g. the session does not exist,
     a record is corrupt, a write failed); the message is on stderr
  2  the tool could not run: bad arguments, bad config, a missing, unreadable or locked
     database; one line on stderr: `palimpsest: error: ...`
With --json, an error is also one object on stdout: {\"error\": {\"kind\": \"...\", \"message\": \"...\"}}"
    };
}
pub(crate) use exit_codes_help;

/// Session memory for LLM agents: inspect, verify and demo a palimpsest database.
#[derive(Parser, Debug)]
#[command(
    name = "palimpsest",
    version,
    about = "Inspect, verify and demo a palimpsest database (session memory for LLM agents).",
    long_about = "Inspect, verify and demo a palimpsest database (session memory for LLM agents).\n\n\
        Every command takes --db DIR (the database directory) and an optional --config FILE (the\n\
        library's configuration, JSON or TOML by extension; --db overrides its `path`). A bad config\n\
        is refused before the database is touched. Run commands on a stopped database: only one\n\
        process may have it open.\n\n\
        With --json, a command prints one JSON object on stdout, and an error is also one object\n\
        there: {\"error\": {\"kind\": \"not_found\", \"message\": \"...\"}}. Logs go to stderr,\n\
        filtered by RUST_LOG (default: warn). Progress bars are drawn only when stderr is a terminal.",
    after_help = concat!(
        "Example:\n",
        "  palimpsest demo --db /tmp/pal-demo\n",
        "  palimpsest show --db /tmp/pal-demo --session demo-1-coding --limit 10\n",
        "  palimpsest compact --db /tmp/pal-demo --session demo-2-travel\n",
        "  palimpsest audit --db /tmp/pal-demo\n\n",
        exit_codes_help!()
    )
)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    /// How log lines on stderr are written (filter them with RUST_LOG, default `warn`).
    #[arg(long, global = true, value_enum, value_name = "FORMAT", default_value_t = log::LogFormat::Text)]
    log_format: log::LogFormat,
}

/// One variant per command; see the module docs for how to add one.
#[derive(Subcommand, Debug)]
enum Command {
    Demo(demo::DemoArgs),
    Show(show::ShowArgs),
    Compact(compact::CompactArgs),
    Audit(audit::AuditArgs),
    Rebuild(rebuild::RebuildArgs),
    Gc(gc::GcArgs),
    Stats(stats::StatsArgs),
    Export(export::ExportArgs),
    Import(import::ImportArgs),
    Delete(delete::DeleteArgs),
    Memories(memories::MemoriesArgs),
    Guards(guards::GuardsArgs),
    Serve(serve::ServeArgs),
    Completions(completions::CompletionsArgs),
}

impl Command {
    async fn run(self) -> Outcome {
        match self {
            Command::Demo(args) => demo::run(args).await,
            Command::Show(args) => show::run(args).await,
            Command::Compact(args) => compact::run(args).await,
            Command::Audit(args) => audit::run(args).await,
            Command::Rebuild(args) => rebuild::run(args).await,
            Command::Gc(args) => gc::run(args).await,
            Command::Stats(args) => stats::run(args).await,
            Command::Export(args) => export::run(args).await,
            Command::Import(args) => import::run(args).await,
            Command::Delete(args) => delete::run(args).await,
            Command::Memories(args) => memories::run(args).await,
            Command::Guards(args) => guards::run(args).await,
            Command::Serve(args) => serve::run(args).await,
            Command::Completions(args) => completions::run(&args),
        }
    }

    /// Whether the command was asked for JSON, and so wants its errors as JSON too.
    fn json(&self) -> bool {
        match self {
            Command::Completions(_) => false,
            Command::Demo(args) => args.json,
            Command::Show(args) => args.json,
            Command::Compact(args) => args.json,
            Command::Audit(args) => args.json,
            Command::Rebuild(args) => args.json,
            Command::Gc(args) => args.json,
            Command::Stats(args) => args.json,
            Command::Export(args) => args.json,
            Command::Import(args) => args.json,
            Command::Delete(args) => args.json,
            Command::Memories(args) => args.json,
            Command::Guards(args) => args.json,
            Command::Serve(args) => args.json,
        }
    }
}

/// Whether the raw arguments ask for JSON, for errors clap raises before anything is parsed.
fn json_in_raw_args() -> bool {
    std::env::args_os().skip(1).take_while(|a| a != "--").any(|a| a == "--json")
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return exit::clap_error(&e, json_in_raw_args()),
    };
    log::init(cli.log_format);
    let json = cli.command.json();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            return exit::report(Err(CliError::unusable(format!("cannot start the async runtime: {e}"))), json);
        }
    };
    let outcome = runtime.block_on(async {
        let outcome = cli.command.run().await;
        // Background extraction (after a splice, or resumed at open) finishes before the exit.
        db::drain_opened().await;
        outcome
    });
    // Shut the runtime down (and with it any engine still held by a task) before exiting.
    drop(runtime);
    exit::report(outcome, json)
}
