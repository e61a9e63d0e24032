//! The options every command takes (`--db DIR`, `--config FILE`) and the one way to open the
//! engine from them.
//!
//! Order matters and is the same for every command: the config is loaded and validated first,
//! so a bad config is refused before anything on disk is touched; then the directory is checked
//! against what the command needs ([`OpenMode`]); only then is the engine opened.
//!
//! Every engine opened here is remembered, so that `main` can drain its background memory
//! extraction ([`drain_opened`]) before the process exits: a compaction's extraction, or one an
//! open resumed, runs to its end instead of being cut off with the runtime. Commands that only
//! read or repair (`open_for_maintenance`) open with extraction off, so they never start any.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use clap::Args;
use palimpsest::{Components, Config, Engine, Error, StorageKind};

use crate::exit::CliError;

/// The longest the tool waits at exit for background memory extraction, in total. What is left
/// then is cancelled and resumed by the next open of the database.
pub const EXIT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Engines this process opened, drained by [`drain_opened`] before it exits.
static OPENED: Mutex<Vec<Engine>> = Mutex::new(Vec::new());

/// Waits (at most [`EXIT_DRAIN_TIMEOUT`] in all) for the background extraction of every engine this
/// process opened, cancels what is left, and says so on stderr. Then the engines are closed.
pub async fn drain_opened() {
    let engines = std::mem::take(&mut *OPENED.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    let deadline = tokio::time::Instant::now() + EXIT_DRAIN_TIMEOUT;
    for engine in engines {
        let budget = deadline.saturating_duration_since(tokio::time::Instant::now());
        let report = engine.drain(budget, true).await;
        if report.left > 0 || report.cancelled > 0 {
            eprintln!(
                "palimpsest: background memory extraction did not finish within {} s: {} cancelled, {} left; \
                 the next open of {} resumes them",
                EXIT_DRAIN_TIMEOUT.as_secs(),
                report.cancelled,
                report.left,
                engine.config().path.display()
            );
        }
    }
}

/// `--db` and `--config`; flatten it into each command's arguments.
#[derive(Args, Debug, Clone)]
pub struct DbArgs {
    /// The database directory (with `storage.kind = "nats"` in --config the logs live on the
    /// cluster and this only names the database in messages).
    #[arg(long, value_name = "DIR")]
    pub db: PathBuf,

    /// The library's config, a .json or .toml file (default: built-in defaults); --db overrides its `path`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// What a command expects to find at `--db`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum OpenMode {
    /// A database that is already there. A missing or empty directory is refused rather than
    /// created, so a mistyped `--db` never leaves a new empty database behind.
    Existing,
    /// A new database: the directory must be missing or empty, so the command never mixes its
    /// writes with real data.
    Fresh,
    /// Either: a database that is there, or a new one in a missing or empty directory (`import`,
    /// whose whole point may be to fill a new database).
    ExistingOrNew,
}

impl DbArgs {
    /// The configuration to open with: the `--config` file (validated) or the defaults, with
    /// `path` set to `--db`. Exit 2 on any problem.
    pub fn config(&self) -> Result<Config, CliError> {
        let mut config = match &self.config {
            Some(file) => Config::load(file).map_err(|e| {
                // Name the file, unless the library's message already does.
                let message = e.to_string();
                let shown = file.display().to_string();
                CliError::unusable(if message.contains(&shown) { message } else { format!("{shown}: {message}") })
            })?,
            None => Config::default(),
        };
        config.path.clone_from(&self.db);
        config.validate().map_err(CliError::from)?;
        Ok(config)
    }

    /// Loads the config, checks the directory against `mode`, and opens the engine (on a
    /// blocking thread: opening runs recovery). Every failure here is exit 2: the command could
    /// not start.
    pub async fn open(&self, mode: OpenMode) -> Result<Engine, CliError> {
        self.open_with(self.config()?, mode).await
    }

    /// Like [`DbArgs::open`], for commands that only read or repair (show, audit, export, stats,
    /// rebuild, gc): background memory extraction is off, so pending extractions are not resumed
    /// (they wait for an open that extracts) and nothing writes while the command looks.
    pub async fn open_for_maintenance(&self, mode: OpenMode) -> Result<Engine, CliError> {
        let mut config = self.config()?;
        config.extraction.enabled = false;
        self.open_with(config, mode).await
    }

    /// Like [`DbArgs::open`], with a config the command derived from [`DbArgs::config`] (for
    /// example with a command-line override). It is validated again here, so an override is
    /// refused (exit 2) before anything on disk is touched.
    pub async fn open_with(&self, config: Config, mode: OpenMode) -> Result<Engine, CliError> {
        config.validate().map_err(CliError::from)?;
        if config.storage.kind == StorageKind::Nats {
            // The logs live on the cluster: there is no directory to check (`--db` only names the
            // database in messages).
            let urls = config.storage.nats.urls.join(", ");
            let engine = Engine::connect(config, Components::default())
                .await
                .map_err(|e| CliError::unusable(format!("cannot open the database on NATS ({urls}): {e}")))?;
            OPENED.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(engine.clone());
            return Ok(engine);
        }
        check_directory(&config.path, mode)?;
        let path = config.path.clone();
        let opened = tokio::task::spawn_blocking(move || Engine::open(config))
            .await
            .map_err(|e| CliError::unusable(format!("opening the database at {} failed: {e}", path.display())))?;
        let engine = opened.map_err(|e| match e {
            // These already name the path.
            Error::Locked { .. } | Error::NotADatabase { .. } => CliError::unusable(e.to_string()),
            other => CliError::unusable(format!("cannot open the database at {}: {other}", path.display())),
        })?;
        OPENED.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(engine.clone());
        Ok(engine)
    }
}

fn check_directory(path: &Path, mode: OpenMode) -> Result<(), CliError> {
    let state = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => DirState::Missing,
        Err(e) => return Err(CliError::unusable(format!("cannot read {}: {e}", path.display()))),
        Ok(meta) if !meta.is_dir() => {
            return Err(CliError::unusable(format!("{} is not a directory", path.display())));
        }
        Ok(_) => {
            let mut entries = std::fs::read_dir(path)
                .map_err(|e| CliError::unusable(format!("cannot list {}: {e}", path.display())))?;
            if entries.next().is_none() { DirState::Empty } else { DirState::NonEmpty }
        }
    };
    match (mode, state) {
        (OpenMode::Existing | OpenMode::ExistingOrNew, DirState::NonEmpty)
        | (OpenMode::Fresh | OpenMode::ExistingOrNew, DirState::Missing | DirState::Empty) => Ok(()),
        (OpenMode::Existing, DirState::Missing) => {
            Err(CliError::unusable(format!("no database at {}: the directory does not exist", path.display())))
        }
        (OpenMode::Existing, DirState::Empty) => {
            Err(CliError::unusable(format!("no database at {}: the directory is empty", path.display())))
        }
        (OpenMode::Fresh, DirState::NonEmpty) => Err(CliError::unusable(format!(
            "{} exists and is not empty; refusing to write into it (name a new or empty directory)",
            path.display()
        ))),
    }
}

enum DirState {
    Missing,
    Empty,
    NonEmpty,
}
