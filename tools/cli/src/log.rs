//! The operator's view of the library's `tracing` events: one subscriber on stderr, filtered by
//! `RUST_LOG` (default `warn`, so every warning the engine raises is printed once and nothing
//! else), as text or as JSON lines (`--log-format json`).
//!
//! Lines go through [`crate::progress::suspend`], so they never tear a progress bar.

use std::io::{IsTerminal as _, Write};

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// The filter when `RUST_LOG` is not set.
pub const DEFAULT_FILTER: &str = "warn";

/// How log lines are written.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, ValueEnum)]
pub enum LogFormat {
    /// One human line per event.
    #[default]
    Text,
    /// One JSON object per event (tracing-subscriber's JSON format).
    Json,
}

/// Installs the subscriber. A `RUST_LOG` that does not parse falls back to the default, with
/// one line saying so.
pub fn init(format: LogFormat) {
    let filter = match std::env::var("RUST_LOG") {
        Err(_) => EnvFilter::new(DEFAULT_FILTER),
        Ok(spec) => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!("palimpsest: warning: RUST_LOG={spec:?} does not parse ({e}); logging at {DEFAULT_FILTER}");
            EnvFilter::new(DEFAULT_FILTER)
        }),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(Stderr).with_target(false);
    // A second subscriber cannot be installed; only `main` calls this, once.
    let _ = match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}

/// Stderr, written with the progress bars out of the way.
struct Stderr;

/// One buffered event: written in one piece when dropped.
struct Line(Vec<u8>);

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let bytes = std::mem::take(&mut self.0);
        // A log line that cannot be written to stderr has nowhere else to go.
        crate::progress::suspend(|| {
            let _ = std::io::stderr().lock().write_all(&bytes);
        });
    }
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Self::Writer {
        Line(Vec::new())
    }
}
