//! `palimpsest rebuild`: rewrites the stored views (session heads, the splice index) from the log,
//! then audits, so the report shows what is still wrong (what the log itself holds).

use clap::Args;
use palimpsest::SessionId;

use crate::audit;
use crate::db::{DbArgs, OpenMode};
use crate::exit::{CliError, Outcome};
use crate::progress;

#[derive(Args, Debug)]
#[command(
    about = "Rewrite the stored views from the log, then audit",
    long_about = "Rewrite the stored views from the log: every session's head (the fold of its events) and\n\
        the splice index, for every session or one. The log itself is never changed: an event that\n\
        does not decode, or a gap, stays for the audit to report. Then run the same audit as\n\
        `palimpsest audit` and print its report, after one line saying what the rebuild changed.\n\n\
        Run it on a stopped database, after taking a copy.",
    after_help = concat!(
        "Example:\n",
        "  palimpsest rebuild --db /tmp/pal-demo\n",
        "  palimpsest rebuild --db /tmp/pal-demo --session demo-1-coding --json\n\n",
        "Human output: this line, then the audit report (see `audit --help`):\n",
        "  rebuild: <n> sessions replayed, <n> heads rewritten, <n> splice-index entries fixed\n\n",
        "JSON output (--json): the audit's object (see `audit --help`) with one more field, first:\n",
        "  \"rebuild\": {\"sessions\": <number>, \"heads_rewritten\": <number>, \"index_entries_fixed\": <number>}\n\n",
        "Exits 0 when the audit after the rebuild finds nothing wrong, 1 otherwise.\n\n",
        crate::exit_codes_help!()
    )
)]
pub struct RebuildArgs {
    #[command(flatten)]
    pub db: DbArgs,

    /// Rebuild (and audit) only this session.
    #[arg(long, value_name = "ID")]
    pub session: Option<SessionId>,

    /// Print one JSON object instead of the human report.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: RebuildArgs) -> Outcome {
    let engine = args.db.open_for_maintenance(OpenMode::Existing).await?;
    let bar = progress::Bar::busy("rebuild");
    let rebuilt = engine.rebuild(args.session.as_ref()).await.map_err(|e| CliError::in_db(e, &args.db.db))?;
    drop(bar);
    let report = audit::audit(&engine, args.session.clone()).await?;
    audit::print_report(&report, args.session.as_ref(), &args.db, args.json, Some(&rebuilt))
}
