//! `palimpsest delete`: deletes one session (the library's `Session::delete`) after a
//! confirmation, then waits, bounded, for the background purge of its dead events.

use std::io::{BufRead as _, IsTerminal as _, Read as _, Write as _};
use std::time::Duration;

use clap::Args;
use palimpsest::SessionId;
use serde::Serialize;

use crate::db::{DbArgs, OpenMode};
use crate::exit::{CliError, Outcome, Status};
use crate::output;

/// The longest `delete` waits for the purge of the dead events before exiting. A purge still
/// running then is finished by the next open of the database (its marker is durable).
pub const PURGE_WAIT: Duration = Duration::from_secs(60);

/// Longest confirmation answer read, bytes.
const MAX_ANSWER_BYTES: u64 = 64;

#[derive(Args, Debug)]
#[command(
    about = "Delete a session, after a confirmation",
    long_about = "Delete a session: one small batch records the deletion, whatever the session's length;\n\
        from then on the session reads as not found. Its dead events are then removed in bounded\n\
        chunks in the background; this command waits for that purge (at most 60 s) and says\n\
        whether it finished. A purge cut short is resumed by the next open of the database.\n\
        Summary blobs of the session become orphans for `palimpsest gc`.\n\n\
        On a terminal it asks for confirmation first, unless --yes. When stdin is not a terminal\n\
        it deletes only with --yes, so a script never deletes by accident.",
    after_help = concat!(
        "Example:\n",
        "  palimpsest delete --db /tmp/pal-demo --session demo-3-ops\n",
        "  palimpsest delete --db /tmp/pal-demo --session demo-3-ops --yes --json\n\n",
        "Human output, one line:\n",
        "  deleted <session> (<n> events) at #<seq>; purge finished | purge still running ...\n\n",
        "JSON output (--json): exactly one object, on one line:\n",
        "  {\"session\": \"<id>\", \"deleted_at\": <seq>, \"n_events\": <number>, \"purged\": true | false}\n\n",
        "A session that does not exist (or is already deleted) exits 1. Declining the confirmation\n",
        "exits 1 and deletes nothing; no terminal and no --yes exits 2.\n\n",
        crate::exit_codes_help!()
    )
)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub db: DbArgs,

    /// The session's id.
    #[arg(long, value_name = "ID")]
    pub session: SessionId,

    /// Delete without asking.
    #[arg(long, short = 'y')]
    pub yes: bool,

    /// Print one JSON object instead of the human form.
    #[arg(long)]
    pub json: bool,
}

/// The documented JSON form (see `delete --help`).
#[derive(Serialize)]
struct DeletedJson<'a> {
    session: &'a str,
    deleted_at: u64,
    n_events: u64,
    purged: bool,
}

pub async fn run(args: DeleteArgs) -> Outcome {
    let interactive = std::io::stdin().is_terminal();
    if !args.yes && !interactive {
        return Err(CliError::unusable("stdin is not a terminal: pass --yes to delete without a confirmation"));
    }
    // Extraction stays off: a deleted session's extractions would be skipped anyway.
    let engine = args.db.open_for_maintenance(OpenMode::Existing).await?;
    let session = engine.session(args.session.as_str())?;
    let n_events = match session.head().await? {
        Some(head) if !head.is_deleted() => head.last_seq().get() - head.base().get(),
        _ => {
            return Err(CliError::not_found(format!(
                "session {:?} not found in {}",
                args.session.as_str(),
                args.db.db.display()
            )));
        }
    };
    if !args.yes && !confirm(&args.session, n_events)? {
        return Err(CliError::failed(format!("{} was not deleted", args.session)));
    }
    let deleted_at = session.delete().await.map_err(|e| CliError::in_db(e, &args.db.db))?;
    let waiting = engine.clone();
    let purged = tokio::task::spawn_blocking(move || waiting.wait_for_purges(PURGE_WAIT))
        .await
        .map_err(|e| CliError::failed(format!("waiting for the purge stopped: {e}")))?;
    if args.json {
        output::print_json(&DeletedJson {
            session: args.session.as_str(),
            deleted_at: deleted_at.get(),
            n_events,
            purged,
        })?;
    } else {
        let purge = if purged {
            "purge finished".to_string()
        } else {
            format!("purge still running after {} s; the next open of the database finishes it", PURGE_WAIT.as_secs())
        };
        output::print_text(&format!(
            "deleted {} ({n_events} event{}) at #{deleted_at}; {purge}\n",
            args.session,
            if n_events == 1 { "" } else { "s" }
        ))?;
    }
    Ok(Status::Ok)
}

/// Asks on stderr and reads one line from stdin: true for `y` or `yes` (any case).
fn confirm(session: &SessionId, n_events: u64) -> Result<bool, CliError> {
    eprint!("delete session {session} ({n_events} events)? This cannot be undone. [y/N] ");
    // The prompt is a courtesy; reading the answer is what matters.
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .take(MAX_ANSWER_BYTES)
        .read_line(&mut answer)
        .map_err(|e| CliError::unusable(format!("cannot read the confirmation: {e}")))?;
    Ok(is_yes(&answer))
}

fn is_yes(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_y_or_yes_confirms() {
        assert!(is_yes("y\n") && is_yes(" YES \n"));
        assert!(!is_yes("\n") && !is_yes("n\n") && !is_yes("yes please\n"));
    }
}
