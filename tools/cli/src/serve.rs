//! `palimpsest serve`: the agent-memory-server compatible HTTP service (the `palimpsest-server`
//! crate) over a database, until SIGTERM or Ctrl-C.
//!
//! `--config FILE` (.toml or .json) holds two optional tables: `engine`, the library's config (as
//! every other command's `--config`, except that `limits.max_batch_messages` defaults to 100,000: a
//! PUT of a whole session is one batch), and `server`, the server's (`palimpsest_server::ServerConfig`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use palimpsest::Config;
use palimpsest_server::{ServeOptions, ServerConfig};
use serde_json::Value;

use crate::db::{DbArgs, OpenMode};
use crate::exit::{CliError, Outcome, Status};

#[derive(Args, Debug)]
#[command(
    about = "Serve the agent-memory-server working-memory API over HTTP until SIGTERM or Ctrl-C",
    long_about = "Serve the agent-memory-server (AMS) working-memory REST API over a database, so that its\n\
        clients (agent-memory-client in Python, or plain HTTP) get palimpsest's costs: reads and appends\n\
        independent of session length, summarization in the background, every change an event.\n\n\
        --config FILE (.toml or .json) may hold an [engine] table (the library's config) and a [server]\n\
        table (limits, background work, token hashes). Bearer tokens are stored as SHA-256 hex\n\
        (server.token_sha256 = [..], or server.token_file with one per line); they are required when\n\
        --listen is not a loopback address, unless --insecure-no-auth. On SIGTERM or Ctrl-C the server\n\
        stops accepting, lets requests in flight finish, drains background work (each bounded by\n\
        server.shutdown_timeout_ms) and closes the database. Logs: RUST_LOG (default warn).",
    after_help = concat!(
        "Example:\n",
        "  palimpsest serve --db /tmp/pal-serve --listen 127.0.0.1:8000\n",
        "  printf %s \"$TOKEN\" | sha256sum    # the hash to put in server.token_sha256\n",
        "  curl -s localhost:8000/v1/health\n\n",
        crate::exit_codes_help!()
    )
)]
pub struct ServeArgs {
    /// The database directory (created if missing or empty).
    #[arg(long, value_name = "DIR")]
    pub db: PathBuf,

    /// The serve config: [engine] (the library's) and [server] tables, .json or .toml.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The address to listen on (overrides server.listen).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Serve without bearer tokens even on a non-loopback address.
    #[arg(long)]
    pub insecure_no_auth: bool,

    /// Print errors as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `limits.max_batch_messages` when the `[engine]` table does not set it.
const SERVE_MAX_BATCH_MESSAGES: u64 = 100_000;

/// The two tables of the serve config file.
fn load(file: Option<&Path>) -> Result<(Config, ServerConfig), CliError> {
    let Some(file) = file else {
        let mut engine = Config::default();
        engine.limits.max_batch_messages = SERVE_MAX_BATCH_MESSAGES;
        return Ok((engine, ServerConfig::default()));
    };
    let shown = file.display().to_string();
    let bad = |m: String| CliError::unusable(format!("{shown}: {m}"));
    let text = std::fs::read_to_string(file).map_err(|e| bad(format!("cannot read: {e}")))?;
    let value: Value = match file.extension().and_then(|e| e.to_str()) {
        Some("json") => serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?,
        Some("toml") => {
            let table: toml::Table = toml::from_str(&text).map_err(|e| bad(format!("not TOML: {e}")))?;
            serde_json::to_value(table).map_err(|e| bad(e.to_string()))?
        }
        _ => return Err(bad("the config must be a .json or .toml file".to_string())),
    };
    let Value::Object(mut tables) = value else { return Err(bad("not a table".to_string())) };
    let mut engine_table = tables.remove("engine").unwrap_or_else(|| Value::Object(Default::default()));
    // A PUT of a whole session is one batch (it lands whole or not at all), so the serve default for
    // `limits.max_batch_messages` is the library's maximum; the request body limit bounds it first.
    if let Value::Object(engine) = &mut engine_table {
        let limits = engine.entry("limits").or_insert_with(|| Value::Object(Default::default()));
        if let Value::Object(limits) = limits {
            limits.entry("max_batch_messages").or_insert(Value::from(SERVE_MAX_BATCH_MESSAGES));
        }
    }
    let engine = Config::from_json_str(&engine_table.to_string()).map_err(|e| bad(format!("[engine] {e}")))?;
    let server = match tables.remove("server") {
        Some(v) => {
            let result: Result<ServerConfig, _> = serde_path_to_error::deserialize(v);
            result.map_err(|e| bad(format!("server.{}: {}", e.path(), e.inner())))?
        }
        None => ServerConfig::default(),
    };
    if let Some(unknown) = tables.keys().next() {
        return Err(bad(format!("unknown table {unknown:?} (expected engine, server)")));
    }
    Ok((engine, server))
}

/// Resolves on SIGTERM or Ctrl-C.
async fn stop_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

pub async fn run(args: ServeArgs) -> Outcome {
    let (mut engine_config, mut server) = load(args.config.as_deref())?;
    engine_config.path.clone_from(&args.db);
    if let Some(listen) = args.listen {
        server.listen = listen;
    }
    let options = ServeOptions { insecure_no_auth: args.insecure_no_auth };
    // Refused before the database is touched: bad server config, or no tokens off loopback.
    palimpsest_server::tokens_for(&server, server.listen, options).map_err(|e| CliError::unusable(e.to_string()))?;
    let db = DbArgs { db: args.db.clone(), config: None };
    let engine = db.open_with(engine_config, OpenMode::ExistingOrNew).await?;
    let listener = tokio::net::TcpListener::bind(server.listen)
        .await
        .map_err(|e| CliError::unusable(format!("cannot listen on {}: {e}", server.listen)))?;
    // The address actually bound (port 0 picks one): tests and scripts read it from this line.
    let bound = listener.local_addr().map_err(|e| CliError::unusable(e.to_string()))?;
    eprintln!("palimpsest serve: listening on http://{bound}");
    let report = palimpsest_server::serve(engine, server, listener, options, stop_signal())
        .await
        .map_err(|e| CliError::failed(e.to_string()))?;
    eprintln!(
        "palimpsest serve: stopped (requests cut: {}, compactions aborted: {}, extractions cancelled: {})",
        report.requests_cut, report.compactions_aborted, report.extractions_cancelled
    );
    Ok(Status::Ok)
}
