//! `palimpsest guards`: the guard counters of `Engine::guard_stats` (namespace locks, the
//! background budget, extraction, episodes) and the deletions still being purged.
//!
//! The counters count since the engine was opened, so in a one-shot tool they show what this open
//! did (extractions resumed or deferred at open, for instance); a long-running service reads the
//! same struct from its own engine.

use std::fmt::Write as _;

use clap::Args;
use palimpsest::GuardStats;
use serde::Serialize;

use crate::db::{DbArgs, OpenMode};
use crate::exit::{CliError, Outcome, Status};
use crate::output;

#[derive(Args, Debug)]
#[command(
    about = "Print the guard counters: locks, background permits, extraction, purges",
    long_about = "Print the guard counters of the engine this command opens (Engine::guard_stats): namespace\n\
        lock attempts, retries and timeouts, background model permits in use and waiters, background\n\
        span loads (permits, in use, waiters, the peak since open, timeouts), the memory\n\
        extraction counters (scheduled, pending, done, failed, timed out, skipped, resumed at open,\n\
        deferred, given up), episode classifier fallbacks; and the deletions whose purge is pending.\n\
        Totals count since this open. Nothing is written, and extraction stays off.",
    after_help = concat!(
        "Example:\n",
        "  palimpsest guards --db /tmp/pal-demo\n",
        "  palimpsest guards --db /tmp/pal-demo --json\n\n",
        "Human output: one `<counter> <value>` line per counter, purges_pending first, then by name.\n\n",
        "JSON output (--json): exactly one object, on one line:\n",
        "  {\"purges_pending\": <number>, \"guards\": {\"lock_attempts\": <number>, ...every counter}}\n\n",
        crate::exit_codes_help!()
    )
)]
pub struct GuardsArgs {
    #[command(flatten)]
    pub db: DbArgs,

    /// Print one JSON object instead of the human form.
    #[arg(long)]
    pub json: bool,
}

/// The documented JSON form (see `guards --help`); the counters are the library's struct as is.
#[derive(Serialize)]
struct GuardsJson<'a> {
    purges_pending: u64,
    guards: &'a GuardStats,
}

pub async fn run(args: GuardsArgs) -> Outcome {
    let engine = args.db.open_for_maintenance(OpenMode::Existing).await?;
    let json = GuardsJson { purges_pending: engine.purges_pending(), guards: &engine.guard_stats() };
    if args.json {
        output::print_json(&json)?;
    } else {
        output::print_text(&guards_human(&json)?)?;
    }
    Ok(Status::Ok)
}

/// One line per counter, names aligned: `purges_pending` first, then the counters in name order.
fn guards_human(json: &GuardsJson<'_>) -> Result<String, CliError> {
    let value = serde_json::to_value(json.guards).map_err(|e| CliError::failed(format!("cannot render: {e}")))?;
    let mut rows = vec![("purges_pending".to_string(), json.purges_pending.to_string())];
    if let Some(fields) = value.as_object() {
        rows.extend(fields.iter().map(|(name, v)| (name.clone(), v.to_string())));
    }
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (name, v) in rows {
        // `write!` into a String cannot fail.
        let _ = writeln!(out, "{name:<width$}  {v}");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_gets_one_line() {
        let stats = GuardStats { lock_retries: 3, ..GuardStats::default() };
        let text = guards_human(&GuardsJson { purges_pending: 1, guards: &stats }).expect("renders");
        assert!(text.lines().next().is_some_and(|l| l.starts_with("purges_pending") && l.ends_with(" 1")), "{text}");
        assert!(text.lines().any(|l| l.starts_with("lock_retries ") && l.ends_with(" 3")), "{text}");
        let n_fields = serde_json::to_value(&stats).expect("serializable").as_object().map_or(0, |o| o.len());
        assert_eq!(text.lines().count(), n_fields + 1);
    }
}
