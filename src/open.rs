//! The top layer: how an engine is put together. Builds the pluggable parts from the config,
//! opens the core (`engine`) on its backend, and attaches the features that stand on it
//! (compaction, episodes, extraction) as [`Features`]: the core sees them only through the write
//! path's hooks (`engine::Features`), and each feature reaches its own `State` through
//! `Engine::feature`.

use std::any::{Any, TypeId};
use std::sync::Arc;

use crate::compaction;
use crate::config::{ClassifierKind, Config, ExtractorKind, StorageKind, SummarizerKind};
use crate::engine::backend::Backend;
use crate::engine::purge::Purger;
use crate::engine::writer::Writer;
use crate::engine::{Batch, Engine};
use crate::episodes::{self, EpisodeClassifier, LexicalClassifier, OpenAiClassifier};
use crate::error::Error;
use crate::extraction::queue::Extractions;
use crate::extraction::{self, MemoryExtractor, OpenAiExtractor, RuleExtractor, pending};
use crate::guard::{GuardStats, Guards};
use crate::log::ids::{Seq, SessionId};
use crate::storage::Store;
use crate::summarizer::{ExtractiveSummarizer, OpenAiSummarizer, Summarizer};

/// Pluggable parts of an engine; each `None` is built from the config
/// (`summarizer.kind`, `episodes.classifier`, `extraction.extractor`).
#[derive(Clone, Default)]
pub struct Components {
    /// Writes compaction summaries.
    pub summarizer: Option<Arc<dyn Summarizer>>,
    /// Decides whether a user turn starts a new episode.
    pub classifier: Option<Arc<dyn EpisodeClassifier>>,
    /// Extracts long-term memories in the background.
    pub extractor: Option<Arc<dyn MemoryExtractor>>,
}

/// The features' state, one per engine: what compaction, episodes and extraction keep between
/// calls, each in its own module's `State`. Built before the engine opens, so a bad part (an
/// OpenAI client the config cannot make) refuses the open before anything is touched.
struct Features {
    compaction: compaction::State,
    episodes: episodes::State,
    extraction: extraction::State,
}

/// The pluggable parts, built from the config where the caller gave none.
struct Parts {
    summarizer: Arc<dyn Summarizer>,
    classifier: Arc<dyn EpisodeClassifier>,
    extractor: Arc<dyn MemoryExtractor>,
}

impl Parts {
    fn build(config: &Config, components: Components) -> Result<Self, Error> {
        // One client for every model-based part that was not supplied, built only if one needs it.
        let mut client: Option<Arc<OpenAiSummarizer>> = None;
        let mut openai = || -> Result<Arc<OpenAiSummarizer>, Error> {
            if let Some(c) = &client {
                return Ok(Arc::clone(c));
            }
            let c = Arc::new(OpenAiSummarizer::new(&config.summarizer.openai)?);
            client = Some(Arc::clone(&c));
            Ok(c)
        };
        let summarizer: Arc<dyn Summarizer> = match (components.summarizer, config.summarizer.kind) {
            (Some(s), _) => s,
            (None, SummarizerKind::Extractive) => Arc::new(ExtractiveSummarizer),
            (None, SummarizerKind::Openai) => openai()?,
        };
        let classifier: Arc<dyn EpisodeClassifier> = match (components.classifier, config.episodes.classifier) {
            (Some(c), _) => c,
            (None, ClassifierKind::Embedded) => Arc::new(LexicalClassifier),
            (None, ClassifierKind::Openai) => Arc::new(OpenAiClassifier::new(openai()?)),
        };
        let extractor: Arc<dyn MemoryExtractor> = match (components.extractor, config.extraction.extractor) {
            (Some(e), _) => e,
            (None, ExtractorKind::Embedded) => Arc::new(RuleExtractor),
            (None, ExtractorKind::Openai) => Arc::new(OpenAiExtractor::new(openai()?)),
        };
        Ok(Self { summarizer, classifier, extractor })
    }

    /// The features' state around these parts, counting into the engine's `guards`.
    fn into_features(self, config: &Config, guards: &Guards) -> Arc<dyn crate::engine::Features> {
        let bg = &config.background;
        let extractions =
            Extractions::new(Arc::clone(&guards.counters), bg.extraction_queue_depth, bg.extraction_timeout_ms);
        Arc::new(Features {
            compaction: compaction::State::new(self.summarizer),
            episodes: episodes::State { classifier: self.classifier },
            extraction: extraction::State { extractor: self.extractor, extractions: Arc::new(extractions) },
        })
    }
}

impl crate::engine::Features for Features {
    fn state(&self, of: TypeId) -> Option<&dyn Any> {
        let states: [&dyn Any; 3] = [&self.compaction, &self.episodes, &self.extraction];
        states.into_iter().find(|state| (*state).type_id() == of)
    }

    fn boundary_pushed(&self, engine: &Engine, batch: &mut Batch, session: &SessionId, at: Seq) {
        // The episode the boundary closes is extracted once the batch lands; its marker rides in
        // the same batch, so a stop before the extraction finishes leaves it for the next open.
        pending::mark(engine, batch, session, at, None, at);
    }

    fn boundaries_landed(&self, engine: &Engine, session: &SessionId, boundaries: &[Seq]) {
        for &boundary in boundaries {
            engine.schedule_episode_extraction(session, boundary);
        }
    }

    fn gauges(&self, stats: &mut GuardStats) {
        let extractions = &self.extraction.extractions;
        stats.extractions_pending = extractions.pending();
        stats.extractions_running = extractions.running();
        stats.extraction_sessions = extractions.sessions();
    }
}

impl Engine {
    /// Validates `config`, opens (or creates) the database and runs recovery. Blocking: in async
    /// code, call it before serving or inside `spawn_blocking`. Inside a tokio runtime, with
    /// `extraction.enabled`, it also queues the memory extractions an earlier run left unfinished
    /// (one bounded read of their markers, see SPEC.md 6b).
    pub fn open(config: Config) -> Result<Self, Error> {
        Self::open_with(config, Components::default())
    }

    /// Like [`Engine::open`], with a summarizer of the caller's instead of the configured one.
    pub fn open_with_summarizer(config: Config, summarizer: Arc<dyn Summarizer>) -> Result<Self, Error> {
        Self::open_with(config, Components { summarizer: Some(summarizer), ..Components::default() })
    }

    /// Like [`Engine::open`], with any of the pluggable parts the caller's.
    pub fn open_with(config: Config, components: Components) -> Result<Self, Error> {
        config.validate()?;
        if config.storage.kind == StorageKind::Nats {
            // Connecting is async (the client lives on the caller's runtime): `connect` does it.
            return Err(Error::InvalidConfig {
                field: "storage.kind".to_string(),
                reason: "\"nats\" is opened with `Engine::connect` (async), not `Engine::open`".to_string(),
            });
        }
        let parts = Parts::build(&config, components)?;
        let store = Arc::new(Store::open(&config.path, config.cache_mb)?);
        let writer = Writer::start(Arc::clone(&store), config.durability, &config.writes)?;
        let purger = Purger::start(store, writer.committer())?;
        tracing::info!(path = %config.path.display(), durability = ?config.durability, summarizer = parts.summarizer.name(), "engine open");
        let features = |config: &Config, guards: &Guards| parts.into_features(config, guards);
        let engine = Self::assemble(config, Backend::Fjall { writer, purger }, features);
        // Extractions that did not finish before the last close are queued again (bounded read).
        // Background work never refuses an open: a failed read leaves the markers for the next one.
        if let Err(e) = pending::resume(&engine) {
            tracing::warn!(error = %e, "pending memory extractions could not be read at open; they wait for the next");
        }
        Ok(engine)
    }

    /// Opens an engine on the configured backend from async code: `storage.kind = "fjall"` opens
    /// the database on a blocking thread (as [`Engine::open_with`]); `"nats"` connects to the
    /// JetStream cluster (`NatsLog::connect`: the durability and replica checks, the streams) on the
    /// caller's runtime, which must outlive the engine. On `nats` the engine serves appends,
    /// reads, time travel, history, listing, deletion, compaction, episodes and memory extraction
    /// (queuing, with `extraction.enabled`, the extractions an earlier run left unfinished, as
    /// `open` does); what reads or writes fjall's files directly answers [`Error::Unsupported`]
    /// (SPEC.md 11a lists both).
    pub async fn connect(config: Config, components: Components) -> Result<Self, Error> {
        config.validate()?;
        match config.storage.kind {
            StorageKind::Fjall => tokio::task::spawn_blocking(move || Self::open_with(config, components))
                .await
                .map_err(|e| Error::storage("open on a blocking thread", e))?,
            StorageKind::Nats => Self::connect_nats(config, components).await,
        }
    }

    #[cfg(feature = "nats")]
    async fn connect_nats(config: Config, components: Components) -> Result<Self, Error> {
        let parts = Parts::build(&config, components)?;
        let log = Arc::new(crate::storage::nats::NatsLog::connect(&config.storage.nats, config.durability).await?);
        tracing::info!(urls = ?config.storage.nats.urls, durability = ?config.durability, "engine connected to JetStream");
        let features = |config: &Config, guards: &Guards| parts.into_features(config, guards);
        let engine = Self::assemble(config, Backend::Nats(Arc::clone(&log)), features);
        // As `open` on fjall: extractions left unfinished are queued again (a bounded listing,
        // each marker checked against its log); a failure never refuses the connect.
        if let Err(e) = pending::resume_nats(&engine, &log).await {
            tracing::warn!(error = %e, "pending memory extractions could not be read at connect; they wait for the next");
        }
        Ok(engine)
    }

    #[cfg(not(feature = "nats"))]
    async fn connect_nats(_config: Config, _components: Components) -> Result<Self, Error> {
        Err(Error::InvalidConfig {
            field: "storage.kind".to_string(),
            reason: "\"nats\": this build has no JetStream backend (cargo feature `nats`)".to_string(),
        })
    }
}
