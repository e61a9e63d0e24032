//! `palimpsest audit`: replays every session (or one) through the library's audit and prints what
//! it found, as a human report or one JSON object. Also the report's two forms, which `rebuild`
//! prints too.

use std::fmt::Write as _;

use clap::Args;
use palimpsest::{AuditOptions, AuditReport, Engine, RebuildReport, SessionId, Violation};
use serde::Serialize;

use crate::db::{DbArgs, OpenMode};
use crate::exit::{CliError, Outcome, Status};
use crate::output;
use crate::progress;

#[derive(Args, Debug)]
#[command(
    about = "Replay every session from its log and check the invariants",
    long_about = "Replay every session (or one) from its log, compare the rebuilt views with the stored\n\
        ones and check the invariants: dense seqs; splices move forward and never past the end; every\n\
        summary blob exists and hashes to its name; no splice separates a tool call from its result;\n\
        every tool result has its call; every event decodes. Also lists orphan summary blobs (left by\n\
        abandoned compactions; harmless, collected by `palimpsest gc`). Nothing is written.\n\n\
        Run it on a stopped database (or a copy). When stderr is a terminal, a spinner counting the\n\
        events read is drawn there; otherwise nothing but the report is printed.",
    after_help = concat!(
        "Example:\n",
        "  palimpsest audit --db /tmp/pal-demo\n",
        "  palimpsest audit --db /tmp/pal-demo --session demo-1-coding --json\n\n",
        "Human output:\n",
        "  audit: ok | audit: <n> violations\n",
        "  <n> sessions, <n> events, <n> splices, <n> blobs checked\n",
        "  <session> <seq> <kind>: <detail>      (one line per violation; `-` when not known)\n",
        "  <n> orphan blobs (`palimpsest gc` collects them)\n\n",
        "JSON output (--json): exactly one object, on one line:\n",
        "  {\n",
        "    \"ok\": true | false,\n",
        "    \"sessions\": <number>, \"events\": <number>, \"splices\": <number>, \"blobs\": <number>,\n",
        "    \"violations\": [\n",
        "      {\"session\": \"<id>\" | null, \"seq\": <seq> | null, \"kind\": \"<kind>\", \"detail\": \"...\"}\n",
        "    ],\n",
        "    \"orphan_blobs\": [\"<blake3 hex>\"]   always empty with --session (needs every session)\n",
        "  }\n",
        "Kinds: malformed_key, undecodable, invalid_event, seq_gap, splice_not_forward, splice_past_end,\n",
        "splice_cuts_tool_pair, missing_blob, blob_hash_mismatch, tool_result_without_call, head_mismatch,\n",
        "missing_head, undecodable_head, head_without_log, splice_index_mismatch, undecodable_record.\n\n",
        "Exits 0 when nothing is wrong, 1 when any violation was found (or --session names no session).\n\n",
        crate::exit_codes_help!()
    )
)]
pub struct AuditArgs {
    #[command(flatten)]
    pub db: DbArgs,

    /// Audit only this session (orphan blobs are then not listed).
    #[arg(long, value_name = "ID")]
    pub session: Option<SessionId>,

    /// Print one JSON object instead of the human report.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: AuditArgs) -> Outcome {
    let engine = args.db.open_for_maintenance(OpenMode::Existing).await?;
    let report = audit(&engine, args.session.clone()).await?;
    print_report(&report, args.session.as_ref(), &args.db, args.json, None)
}

/// Runs the library's audit (on either backend), with a spinner on stderr when it is a terminal.
pub async fn audit(engine: &Engine, session: Option<SessionId>) -> Result<AuditReport, CliError> {
    let bar = progress::Bar::spinner("audit", "events");
    Ok(engine.audit_async(AuditOptions { session }, move |n_events| bar.set(n_events)).await?)
}

/// Prints the report (after what `rebuild` changed, when given) and picks the exit status: 1 on
/// any violation, or when `session` was asked for and no such session exists.
pub fn print_report(
    report: &AuditReport,
    session: Option<&SessionId>,
    db: &DbArgs,
    json: bool,
    rebuild: Option<&RebuildReport>,
) -> Outcome {
    if let Some(id) = session
        && report.sessions == 0
    {
        return Err(CliError::not_found(format!("session {:?} not found in {}", id.as_str(), db.db.display())));
    }
    if json {
        output::print_json(&ReportJson::new(report, rebuild))?;
    } else {
        let mut text = rebuild.map(rebuild_human).unwrap_or_default();
        text.push_str(&report_human(report, session.is_some()));
        output::print_text(&text)?;
    }
    Ok(if report.ok { Status::Ok } else { Status::Failed })
}

/// The documented JSON form of an audit report (see `audit --help`).
#[derive(Serialize)]
struct ReportJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    rebuild: Option<RebuildJson>,
    ok: bool,
    sessions: u64,
    events: u64,
    splices: u64,
    blobs: u64,
    violations: Vec<ViolationJson<'a>>,
    orphan_blobs: &'a [String],
}

#[derive(Serialize)]
struct ViolationJson<'a> {
    session: Option<&'a str>,
    seq: Option<u64>,
    kind: String,
    detail: &'a str,
}

/// The documented JSON form of what `rebuild` changed (see `rebuild --help`).
#[derive(Serialize)]
struct RebuildJson {
    sessions: u64,
    heads_rewritten: u64,
    index_entries_fixed: u64,
}

impl<'a> ReportJson<'a> {
    fn new(report: &'a AuditReport, rebuild: Option<&RebuildReport>) -> Self {
        Self {
            rebuild: rebuild.map(|r| RebuildJson {
                sessions: r.sessions,
                heads_rewritten: r.heads_rewritten,
                index_entries_fixed: r.index_entries_fixed,
            }),
            ok: report.ok,
            sessions: report.sessions,
            events: report.events,
            splices: report.splices,
            blobs: report.blobs,
            violations: report
                .violations
                .iter()
                .map(|v| ViolationJson {
                    session: v.session.as_deref(),
                    seq: v.seq,
                    kind: kind_name(v),
                    detail: &v.detail,
                })
                .collect(),
            orphan_blobs: &report.orphan_blobs,
        }
    }
}

/// The violation kind's stable name (`seq_gap`, ...).
fn kind_name(v: &Violation) -> String {
    v.kind.as_str().to_string()
}

/// The human report; see `audit --help`.
fn report_human(report: &AuditReport, one_session: bool) -> String {
    let mut out = String::new();
    let n_violations = report.violations.len() as u64;
    // `write!` into a String cannot fail; the results are ignored for that reason.
    let _ = if report.ok {
        writeln!(out, "audit: ok")
    } else {
        writeln!(out, "audit: {n_violations} violation{}", plural(n_violations))
    };
    let _ = writeln!(
        out,
        "{} session{}, {} event{}, {} splice{}, {} blob{} checked",
        report.sessions,
        plural(report.sessions),
        report.events,
        plural(report.events),
        report.splices,
        plural(report.splices),
        report.blobs,
        plural(report.blobs)
    );
    for v in &report.violations {
        let seq = v.seq.map_or_else(|| "-".to_string(), |s| s.to_string());
        let detail = output::clean(&v.detail).split_whitespace().collect::<Vec<_>>().join(" ");
        let _ = writeln!(out, "{} {seq} {}: {detail}", v.session.as_deref().unwrap_or("-"), kind_name(v));
    }
    let n_orphans = report.orphan_blobs.len() as u64;
    let _ = if one_session {
        writeln!(out, "orphan blobs: not listed for a single session")
    } else if n_orphans == 0 {
        writeln!(out, "0 orphan blobs")
    } else {
        writeln!(out, "{n_orphans} orphan blob{} (`palimpsest gc` collects them)", plural(n_orphans))
    };
    out
}

fn rebuild_human(r: &RebuildReport) -> String {
    format!(
        "rebuild: {} session{} replayed, {} head{} rewritten, {} splice-index entr{} fixed\n",
        r.sessions,
        plural(r.sessions),
        r.heads_rewritten,
        plural(r.heads_rewritten),
        r.index_entries_fixed,
        if r.index_entries_fixed == 1 { "y" } else { "ies" }
    )
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use palimpsest::ViolationKind;

    use super::*;

    fn report() -> AuditReport {
        AuditReport {
            ok: false,
            sessions: 2,
            events: 10,
            splices: 1,
            blobs: 1,
            violations: vec![
                Violation {
                    session: Some("s-1".to_string()),
                    seq: Some(4),
                    kind: ViolationKind::SeqGap,
                    detail: "expected seq 3,\nfound 4".to_string(),
                },
                Violation { session: None, seq: None, kind: ViolationKind::MalformedKey, detail: "key".to_string() },
            ],
            orphan_blobs: vec!["ab".repeat(32)],
        }
    }

    #[test]
    fn human_report_has_one_line_per_violation() {
        let text = report_human(&report(), false);
        let expected = "audit: 2 violations\n2 sessions, 10 events, 1 splice, 1 blob checked\n\
                        s-1 4 seq_gap: expected seq 3, found 4\n- - malformed_key: key\n\
                        1 orphan blob (`palimpsest gc` collects them)\n";
        assert_eq!(text, expected);
    }

    #[test]
    fn json_report_has_the_documented_fields() {
        let value = serde_json::to_value(ReportJson::new(&report(), None)).expect("serializable");
        assert_eq!(value["ok"], false);
        assert!(value.get("rebuild").is_none());
        assert_eq!(value["violations"][0]["kind"], "seq_gap");
        assert_eq!(value["violations"][1]["session"], serde_json::Value::Null);
        assert_eq!(value["orphan_blobs"][0], "ab".repeat(32));
    }
}
