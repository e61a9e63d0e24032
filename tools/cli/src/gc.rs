//! `palimpsest gc`: lists the summary blobs no splice references (left by abandoned compactions and
//! deleted sessions) and removes them.

use std::fmt::Write as _;

use clap::Args;
use serde::Serialize;

use crate::db::{DbArgs, OpenMode};
use crate::exit::{Outcome, Status};
use crate::output;

#[derive(Args, Debug)]
#[command(
    about = "List and remove orphan summary blobs",
    long_about = "List the summary blobs that no splice references and remove them. Orphans are harmless:\n\
        a compaction abandoned after storing its summary, or a deleted session, leaves them behind.\n\
        Finding them reads every session's log (as `audit` does). With --dry-run nothing is removed.\n\n\
        On storage.kind = \"nats\" (--config) only blobs the servers stored more than\n\
        storage.nats.orphan_grace_ms ago (default an hour) are orphans here: engines elsewhere may be\n\
        about to splice a younger one.",
    after_help = concat!(
        "Example:\n",
        "  palimpsest gc --db /tmp/pal-demo --dry-run\n",
        "  palimpsest gc --db /tmp/pal-demo\n\n",
        "Output: one blake3 hash (hex) per orphan blob, then one line:\n",
        "  gc: removed <n> orphan blobs | gc: would remove <n> orphan blobs (dry run)\n\n",
        "JSON output (--json): exactly one object, on one line:\n",
        "  {\"dry_run\": true | false, \"orphan_blobs\": [\"<blake3 hex>\"]}\n\n",
        crate::exit_codes_help!()
    )
)]
pub struct GcArgs {
    #[command(flatten)]
    pub db: DbArgs,

    /// List what would be removed, and remove nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Print one JSON object instead of the human form.
    #[arg(long)]
    pub json: bool,
}

/// The documented JSON form (see `gc --help`).
#[derive(Serialize)]
struct GcJson {
    dry_run: bool,
    orphan_blobs: Vec<String>,
}

pub async fn run(args: GcArgs) -> Outcome {
    let engine = args.db.open_for_maintenance(OpenMode::Existing).await?;
    let orphans = engine.collect_orphan_blobs(args.dry_run).await?;
    if args.json {
        output::print_json(&GcJson {
            dry_run: args.dry_run,
            orphan_blobs: orphans.iter().map(ToString::to_string).collect(),
        })?;
        return Ok(Status::Ok);
    }
    let mut out = String::new();
    for hash in &orphans {
        // `write!` into a String cannot fail.
        let _ = writeln!(out, "{hash}");
    }
    let n = orphans.len();
    let blobs = if n == 1 { "blob" } else { "blobs" };
    let _ = if args.dry_run {
        writeln!(out, "gc: would remove {n} orphan {blobs} (dry run)")
    } else {
        writeln!(out, "gc: removed {n} orphan {blobs}")
    };
    output::print_text(&out)?;
    Ok(Status::Ok)
}
