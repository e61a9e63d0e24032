//! `palimpsest stats`: counts and sizes of a database, as the library's `Engine::stats` reports them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use clap::Args;
use palimpsest::Stats;
use serde::Serialize;

use crate::db::{DbArgs, OpenMode};
use crate::exit::{Outcome, Status};
use crate::output;

/// Session ids listed by the human form; `--json` lists them all.
const SHOWN_SESSION_IDS: usize = 20;

#[derive(Args, Debug)]
#[command(
    about = "Print counts and sizes: sessions, events, bytes, splices, blobs, keyspaces",
    long_about = "Print counts and sizes of a database: live sessions (and their ids), events and the bytes of\n\
        their stored values, splice events, summary blobs, and the on-disk size of each keyspace.\n\
        Reads every key of the events and blobs keyspaces. Nothing is written.\n\n\
        Keyspace sizes count the segment files fjall has flushed; recent writes still held in its\n\
        journal are not counted, so a small or freshly written database may show 0 bytes. On\n\
        storage.kind = \"nats\" (--config) the sizes are those of the database's streams instead.",
    after_help = concat!(
        "Example:\n",
        "  palimpsest stats --db /tmp/pal-demo\n",
        "  palimpsest stats --db /tmp/pal-demo --json\n\n",
        "JSON output (--json): exactly one object, on one line:\n",
        "  {\n",
        "    \"sessions\": <number>,            live (not deleted) sessions\n",
        "    \"session_ids\": [\"<id>\"],          in id order\n",
        "    \"events\": <number>, \"event_bytes\": <number>, \"splices\": <number>, \"blobs\": <number>,\n",
        "    \"keyspace_bytes\": {\"events\": <bytes>, \"heads\": <bytes>, \"splices\": <bytes>,\n",
        "                       \"blobs\": <bytes>, \"meta\": <bytes>}\n",
        "  }\n\n",
        crate::exit_codes_help!()
    )
)]
pub struct StatsArgs {
    #[command(flatten)]
    pub db: DbArgs,

    /// Print one JSON object instead of the human form.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: StatsArgs) -> Outcome {
    let engine = args.db.open_for_maintenance(OpenMode::Existing).await?;
    let stats = engine.stats_async().await?;
    if args.json {
        output::print_json(&StatsJson::new(&stats))?;
    } else {
        output::print_text(&stats_human(&stats))?;
    }
    Ok(Status::Ok)
}

/// The documented JSON form (see `stats --help`).
#[derive(Serialize)]
struct StatsJson<'a> {
    sessions: u64,
    session_ids: &'a [String],
    events: u64,
    event_bytes: u64,
    splices: u64,
    blobs: u64,
    keyspace_bytes: BTreeMap<&'a str, u64>,
}

impl<'a> StatsJson<'a> {
    fn new(stats: &'a Stats) -> Self {
        Self {
            sessions: stats.sessions,
            session_ids: &stats.session_ids,
            events: stats.events,
            event_bytes: stats.event_bytes,
            splices: stats.splices,
            blobs: stats.blobs,
            keyspace_bytes: stats.keyspace_bytes.iter().map(|(name, bytes)| (name.as_str(), *bytes)).collect(),
        }
    }
}

fn stats_human(stats: &Stats) -> String {
    let mut out = String::new();
    // `write!` into a String cannot fail; the results are ignored for that reason.
    let _ = writeln!(out, "sessions     {}", stats.sessions);
    let _ = writeln!(out, "events       {} ({} bytes)", stats.events, stats.event_bytes);
    let _ = writeln!(out, "splices      {}", stats.splices);
    let _ = writeln!(out, "blobs        {}", stats.blobs);
    out.push_str("keyspaces (bytes on disk):\n");
    let width = stats.keyspace_bytes.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    for (name, bytes) in &stats.keyspace_bytes {
        let _ = writeln!(out, "  {name:<width$}  {bytes}");
    }
    if !stats.session_ids.is_empty() {
        out.push_str("session ids:\n");
        for id in stats.session_ids.iter().take(SHOWN_SESSION_IDS) {
            let _ = writeln!(out, "  {id}");
        }
        if stats.session_ids.len() > SHOWN_SESSION_IDS {
            let _ =
                writeln!(out, "  ... and {} more (--json lists them all)", stats.session_ids.len() - SHOWN_SESSION_IDS);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_sizes_become_an_object() {
        let stats = Stats {
            sessions: 1,
            session_ids: vec!["a".to_string()],
            keyspace_bytes: vec![("events".to_string(), 10), ("heads".to_string(), 2)],
            ..Stats::default()
        };
        let value = serde_json::to_value(StatsJson::new(&stats)).expect("serializable");
        assert_eq!(value["keyspace_bytes"]["events"], 10);
        assert_eq!(value["session_ids"][0], "a");
        assert!(stats_human(&stats).contains("  events  10\n"));
    }
}
