//! `palimpsest serve`: an agent-memory-server (AMS) compatible HTTP service over the palimpsest
//! library's public API, with reads and appends whose cost does not grow with the session and
//! summarization that never blocks a request. The wire contract is SPEC.md, "HTTP service".
//!
//! Map of the crate:
//! - `config`: [`ServerConfig`] (the `[server]` table), bearer token hashes.
//! - `ids`: [`SessionKey`], the injective map from (session id, namespace, user id) to a library id.
//! - `model`: the wire shapes, the session document kept as library metadata, the message
//!   mapping, timestamps, token counts and context percentages (pure).
//! - `diff`: what a PUT's messages mean against the stored ones: append or replacement (pure).
//! - `service`: the operations over the library (read, PUT, append extension, delete, list, prompt).
//! - `background`: summarization after writes and the TTL sweep, both bounded.
//! - `metrics`: Prometheus text exposition.
//! - `error`: [`ApiError`], upstream's status codes and body shapes.
//! - `app`: the axum router and its layers (tracing, metrics, timeout, concurrency bound, auth,
//!   body limit, compression).

mod app;
mod background;
mod config;
mod diff;
mod error;
mod ids;
mod metrics;
mod model;
mod service;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use palimpsest::Engine;
use tokio::net::TcpListener;

pub use crate::config::{ConfigError, ServerConfig, hash_token};
pub use crate::error::ApiError;
pub use crate::ids::{MAX_PART_BYTES, SessionKey};

/// Why the server did not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listen address is not loopback, no token is configured, and `--insecure-no-auth` was
    /// not given.
    #[error(
        "refusing to listen on {0} without authentication: configure server.token_sha256 or server.token_file, \
         or pass --insecure-no-auth"
    )]
    AuthRequired(SocketAddr),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Listening or serving failed.
    #[error("serving failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Options of one run.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServeOptions {
    /// Serve without tokens even on a non-loopback address.
    pub insecure_no_auth: bool,
}

/// What shutdown found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Whether requests in flight were cut off at `server.shutdown_timeout_ms`.
    pub requests_cut: bool,
    /// Background compactions aborted at the deadline (each abandoned, as if never started).
    pub compactions_aborted: usize,
    /// Memory extractions cancelled at the deadline (their markers stay; the next open resumes them).
    pub extractions_cancelled: u64,
}

/// The token hashes to check, after the rule: tokens are required when `listen` is not loopback,
/// unless `insecure_no_auth`.
pub fn tokens_for(
    config: &ServerConfig,
    listen: SocketAddr,
    options: ServeOptions,
) -> Result<Vec<[u8; 32]>, ServeError> {
    config.validate()?;
    let tokens = config.token_hashes()?;
    if tokens.is_empty() && !listen.ip().is_loopback() && !options.insecure_no_auth {
        return Err(ServeError::AuthRequired(listen));
    }
    Ok(tokens)
}

/// Serves on `listener` until `shutdown` resolves, then: stops accepting, lets requests in flight
/// finish (at most `server.shutdown_timeout_ms`), stops the TTL sweep, drains the background
/// compactions and memory extractions (the same bound each), and returns. The caller then drops
/// the engine, which closes the database.
///
/// Cancel safety: dropping the future stops serving at once (connections and background tasks
/// are dropped); every write is one atomic batch, so nothing is left half-written.
pub async fn serve(
    engine: Engine,
    config: ServerConfig,
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<ShutdownReport, ServeError> {
    let listen = listener.local_addr()?;
    let tokens = tokens_for(&config, listen, options)?;
    let metrics = Arc::new(metrics::Metrics::default());
    let limit = usize::try_from(config.max_background_compactions).unwrap_or(usize::MAX);
    let background = Arc::new(background::Background::new(limit, config.summarization, Arc::clone(&metrics)));
    let grace = Duration::from_millis(config.shutdown_timeout_ms);
    let sweep_every = Duration::from_secs(config.ttl_sweep_interval_s);
    let sweep_batch = usize::try_from(config.ttl_sweep_batch).unwrap_or(usize::MAX);
    let state = Arc::new(app::AppState {
        service: service::Service { engine: engine.clone(), config, metrics, background: Arc::clone(&background) },
        tokens,
    });
    tracing::info!(%listen, auth = !state.tokens.is_empty(), "palimpsest serve listening");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sweeper = {
        let state = Arc::clone(&state);
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut cursor = None;
            let mut tick = tokio::time::interval(sweep_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return,
                }
                match background::sweep(&state.service, cursor.take(), sweep_batch).await {
                    Ok(next) => cursor = next,
                    Err(e) => tracing::warn!(error = %e, "TTL sweep failed; the next one starts over"),
                }
            }
        })
    };

    let mut server_stop = stop_rx.clone();
    let app = app::router(Arc::clone(&state));
    let mut server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = server_stop.changed().await;
            })
            .await
    });
    let mut report = ShutdownReport::default();
    tokio::select! {
        () = shutdown => {}
        done = &mut server => {
            // The server ended by itself: an accept loop failure.
            let _ = stop_tx.send(true);
            let _ = sweeper.await;
            return match done {
                Ok(Ok(())) => Ok(report),
                Ok(Err(e)) => Err(ServeError::Io(e)),
                Err(join) => Err(ServeError::Io(std::io::Error::other(join.to_string()))),
            };
        }
    }
    tracing::info!("shutting down: no new connections; waiting for requests in flight");
    let _ = stop_tx.send(true);
    match tokio::time::timeout(grace, &mut server).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "server ended with an error during shutdown"),
        Ok(_) => {}
        Err(_) => {
            tracing::warn!(
                timeout_ms = grace.as_millis() as u64,
                "requests still in flight at the deadline; cutting them off"
            );
            report.requests_cut = true;
            server.abort();
            let _ = server.await;
        }
    }
    let _ = sweeper.await;
    report.compactions_aborted = background.drain(grace).await;
    let drained = engine.drain(grace, true).await;
    report.extractions_cancelled = drained.cancelled;
    tracing::info!(?report, "shutdown complete");
    Ok(report)
}
