//! Episodes: a session's turns grouped by task.
//!
//! An [`EpisodeClassifier`] decides, for each new user turn given to [`Session::append_turn`],
//! whether it continues the current episode or starts a new task. Two ship: the embedded
//! [`LexicalClassifier`] (deterministic, offline) and [`OpenAiClassifier`], which asks an
//! OpenAI-compatible model. The call is bounded by `episodes.classify_timeout_ms`; a timeout or an
//! error is answered "new task" with the reason `ClassifierFallback`, so a wedged model can delay a
//! turn by at most that long and never block it.
//!
//! Independently of any classifier, an episode is force-closed at `episodes.max_turns_per_episode`
//! user turns: every write of a user message (a plain append too) that would pass the cap writes a
//! `TurnCap` boundary before it, in the same batch. The count lives in the session's head, so the
//! cap holds across a reopen. Boundaries are events (`EpisodeBoundary { episode, reason }`), folded
//! by `apply` and replayed by audit like any other. Closing an episode schedules memory extraction
//! of it in the background (see `extract`).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::engine::{Consumed, Session, now_ms};
use crate::error::Error;
use crate::guard::stats::add;
use crate::log::event::{BoundaryReason, EventKind, Message, Role};
use crate::log::fold::{self, Head};
use crate::log::ids::{Seq, SessionId};
use crate::log::view::{StoredMessage, messages_of};
use crate::storage::Read;
use crate::summarizer::{BoxFuture, OpenAiSummarizer, truncate_bytes};

/// Most events read to show a classifier the current episode's recent messages.
pub const CLASSIFY_CONTEXT_EVENTS: usize = 32;

/// Longest text of one message shown to a model-based classifier, bytes.
const CLASSIFY_MESSAGE_BYTES: usize = 2_048;

/// What a classifier decided about a new user turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EpisodeDecision {
    /// The turn continues the current episode.
    Continue,
    /// The turn starts a new task: the current episode ends before it.
    NewTask,
}

/// What a classifier sees.
#[derive(Clone, Debug)]
pub struct ClassifyInput {
    /// The session.
    pub session: SessionId,
    /// The current episode (0-based).
    pub episode: u64,
    /// User turns in the current episode so far.
    pub episode_turns: u64,
    /// The current episode's most recent messages, oldest first (at most
    /// [`CLASSIFY_CONTEXT_EVENTS`] events are read to find them).
    pub recent: Vec<StoredMessage>,
    /// The new user turn.
    pub message: Message,
}

/// Decides whether a new user turn continues the episode. Implementations must be cancel-safe:
/// the engine drops the future when `episodes.classify_timeout_ms` runs out.
pub trait EpisodeClassifier: Send + Sync + 'static {
    /// A short name for logs.
    fn name(&self) -> &str;

    /// Classifies one turn. An error is treated as "new task" (`ClassifierFallback`).
    fn classify(&self, input: ClassifyInput) -> BoxFuture<'_, Result<EpisodeDecision, Error>>;
}

/// A boundary written before a turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Boundary {
    /// Seq of the `EpisodeBoundary` event.
    pub seq: Seq,
    /// The episode it closed.
    pub episode: u64,
    /// Why.
    pub reason: BoundaryReason,
}

/// What [`Session::append_turn`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TurnOutcome {
    /// Seq of the user message.
    pub seq: Seq,
    /// The episode the message belongs to.
    pub episode: u64,
    /// The boundary written before it, if any (classified, fallback, or the turn cap).
    pub boundary: Option<Boundary>,
    /// What the classifier answered (`NewTask` also on a fallback).
    pub decision: EpisodeDecision,
}

/// What episodes keep per engine (attached by `crate::open`).
pub(crate) struct State {
    /// Decides whether a user turn starts a new episode.
    pub(crate) classifier: Arc<dyn EpisodeClassifier>,
}

/// `engine`'s episode state.
fn state(engine: &crate::engine::Engine) -> &State {
    engine.feature::<State>()
}

/// Runs `classifier` under `timeout`; a timeout or an error becomes `NewTask`/`ClassifierFallback`.
pub(crate) async fn classify_bounded(
    classifier: &dyn EpisodeClassifier,
    input: ClassifyInput,
    timeout: Duration,
) -> (EpisodeDecision, BoundaryReason, bool) {
    let session = input.session.clone();
    match tokio::time::timeout(timeout, classifier.classify(input)).await {
        Ok(Ok(decision)) => (decision, BoundaryReason::Classified, false),
        Ok(Err(e)) => {
            tracing::warn!(session = %session, classifier = classifier.name(), error = %e, "episode classifier failed; taking the turn as a new task");
            (EpisodeDecision::NewTask, BoundaryReason::ClassifierFallback, true)
        }
        Err(_) => {
            tracing::warn!(session = %session, classifier = classifier.name(), timeout_ms = timeout.as_millis() as u64, "episode classifier timed out; taking the turn as a new task");
            (EpisodeDecision::NewTask, BoundaryReason::ClassifierFallback, true)
        }
    }
}

impl Session {
    /// Appends one user turn after asking the episode classifier whether it starts a new task.
    /// The classifier runs without any lock, bounded by `episodes.classify_timeout_ms` (a timeout
    /// or error counts as a new task). Then the boundary (if the turn starts a new task or the
    /// episode reached `episodes.max_turns_per_episode`) and the message are written in one atomic
    /// batch. A closed episode is handed to background memory extraction.
    ///
    /// Cancel safety: dropped during the classifier call or while waiting for the lock or a queue
    /// place, nothing is written; once the batch is queued it lands whole, with the session's lock
    /// held until it has. A landed boundary's extraction is then durable through its pending marker
    /// (resumed at the next open) even though this call did not queue it.
    pub async fn append_turn(&self, mut message: Message) -> Result<TurnOutcome, Error> {
        let inner = self.engine().inner();
        let config = &inner.config;
        if message.role != Role::User {
            return Err(Error::InvalidMessage {
                index: 0,
                reason: format!("append_turn takes a user message, not a {} message", message.role),
            });
        }
        let max_bytes = usize::try_from(config.limits.max_message_bytes).unwrap_or(usize::MAX);
        let max_open = usize::try_from(config.limits.max_open_tool_calls).unwrap_or(usize::MAX);
        message.validate(0, max_bytes)?;
        if message.created_at_ms == 0 {
            message.created_at_ms = now_ms();
        }

        let (head, version) = self.head_for_context().await?;
        let (decision, reason) = if head.episode_turns() == 0 {
            // Nothing to continue or to close: the first turn of an episode needs no model call.
            (EpisodeDecision::Continue, BoundaryReason::Classified)
        } else {
            let input = ClassifyInput {
                session: self.id().clone(),
                episode: head.episode(),
                episode_turns: head.episode_turns(),
                recent: self.episode_context(&head, version).await?,
                message: message.clone(),
            };
            let timeout = Duration::from_millis(config.episodes.classify_timeout_ms);
            let (decision, reason, fell_back) =
                classify_bounded(state(self.engine()).classifier.as_ref(), input, timeout).await;
            if fell_back {
                add(&inner.guards.counters.classifier_fallbacks, 1);
            }
            (decision, reason)
        };

        let cap = config.episodes.max_turns_per_episode;
        let mut boundary = None;
        let mut message = Consumed::new(self.engine(), message);
        let head = self
            .engine()
            .write_events(self.id(), |batch| {
                boundary = None;
                let message = message.take()?;
                // Re-decided on the current head: a turn appended meanwhile may have closed the
                // episode already (then there is nothing left to close) or brought it to the cap.
                let head = batch.head();
                let close = if decision == EpisodeDecision::NewTask && head.episode_turns() > 0 {
                    Some((head.episode(), reason))
                } else {
                    fold::turn_cap_reached(head, cap).then_some((head.episode(), BoundaryReason::TurnCap))
                };
                // Checked against the head the boundary leaves, so an error leaves nothing written.
                if let Some((episode, reason)) = close {
                    let seq = batch.push(EventKind::EpisodeBoundary { episode, reason })?;
                    self.engine().mark_extraction_pending(batch, self.id(), seq, None, seq);
                    boundary = Some(Boundary { seq, episode, reason });
                }
                fold::check_message(batch.head(), &message, 0, max_open)?;
                batch.push(EventKind::MessageAppended(message))?;
                Ok(())
            })
            .await?;
        if let Some(b) = &boundary {
            tracing::debug!(session = %self.id(), episode = b.episode, reason = ?b.reason, seq = %b.seq, "episode closed");
            self.engine().schedule_episode_extraction(self.id(), b.seq);
        }
        Ok(TurnOutcome { seq: head.last_seq(), episode: head.episode(), boundary, decision })
    }

    /// Closes the current episode with an `Explicit` boundary and hands it to background memory
    /// extraction. Returns the boundary's seq, or `None` when the episode has no user turn yet
    /// (there is nothing to close). A session without events is [`Error::NotFound`].
    ///
    /// Cancel safety: as [`Session::append_turn`]: nothing or the whole boundary lands.
    pub async fn close_episode(&self) -> Result<Option<Seq>, Error> {
        let id = self.id();
        let mut wrote = false;
        let head = self
            .engine()
            .write_events(id, |batch| {
                let head = batch.head();
                if head.last_seq() == Seq::ZERO || head.is_deleted() {
                    return Err(Error::NotFound { session: id.to_string() });
                }
                if head.episode_turns() == 0 {
                    return Ok(());
                }
                wrote = true;
                let episode = head.episode();
                let at = batch.push(EventKind::EpisodeBoundary { episode, reason: BoundaryReason::Explicit })?;
                self.engine().mark_extraction_pending(batch, id, at, None, at);
                Ok(())
            })
            .await?;
        if !wrote {
            return Ok(None);
        }
        self.engine().schedule_episode_extraction(id, head.last_seq());
        Ok(Some(head.last_seq()))
    }

    /// The session's head (the default for a session without events) and, on JetStream, its
    /// version: the classifier's context is read as of that head.
    async fn head_for_context(&self) -> Result<(Head, u64), Error> {
        #[cfg(feature = "nats")]
        if let Some(log) = self.engine().inner().backend.nats() {
            return Ok(log
                .head(self.id())
                .await?
                .map_or((Head::default(), 0), |(head, version)| (head, version.get())));
        }
        Ok((self.head().await?.unwrap_or_default(), 0))
    }

    /// The current episode's latest messages: those after the last boundary among the last
    /// [`CLASSIFY_CONTEXT_EVENTS`] events, read as of `head` (on JetStream at `version`: no head
    /// read of its own, nothing past it).
    async fn episode_context(&self, head: &Head, version: u64) -> Result<Vec<StoredMessage>, Error> {
        let last = head.last_seq().get();
        let from = last.saturating_sub(CLASSIFY_CONTEXT_EVENTS as u64 - 1).max(head.base().get() + 1);
        if from > last {
            return Ok(Vec::new());
        }
        let (from, to, limit) = (Seq::new(from), head.last_seq(), CLASSIFY_CONTEXT_EVENTS);
        #[cfg(feature = "nats")]
        let events = match self.engine().inner().backend.nats() {
            Some(log) => {
                let version = crate::storage::nats::Version::at(version);
                log.events_as_of(self.id(), head, version, from, to, limit).await?
            }
            None => self.engine().store("episode classification")?.events(self.id(), from, to, limit)?,
        };
        #[cfg(not(feature = "nats"))]
        let events = {
            let _ = version;
            self.engine().store("episode classification")?.events(self.id(), from, to, limit)?
        };
        let start =
            events.iter().rposition(|e| matches!(e.kind, EventKind::EpisodeBoundary { .. })).map_or(0, |i| i + 1);
        Ok(messages_of(events.into_iter().skip(start)).collect())
    }
}

/// Phrases that announce a change of task.
const NEW_TASK_MARKERS: &[&str] = &[
    "new task",
    "new topic",
    "new question",
    "different topic",
    "different question",
    "another question",
    "another task",
    "unrelated",
    "something else",
    "switching to",
    "change of subject",
    "start over",
    "let's move on",
    "moving on",
];

/// Words too common to say anything about a task.
const STOPWORDS: &[&str] = &[
    "the", "and", "for", "are", "but", "not", "you", "all", "any", "can", "had", "her", "was", "one", "our", "out",
    "has", "have", "him", "his", "how", "its", "may", "now", "see", "two", "who", "did", "yes", "get", "got", "let",
    "put", "say", "she", "too", "use", "that", "this", "with", "from", "they", "will", "would", "there", "their",
    "what", "about", "which", "when", "make", "like", "just", "into", "than", "them", "then", "some", "could",
    "please", "thanks", "thank", "also", "want", "need", "should", "does", "done", "been", "were", "your", "here",
    "more", "very", "much", "well", "okay",
];

/// The smallest number of content words a turn needs before no overlap at all is taken as a
/// change of task; shorter turns ("ok, do it") continue the episode.
const MIN_WORDS_FOR_NEW_TASK: usize = 4;

/// The embedded classifier: deterministic, offline, lexical.
///
/// A turn starts a new task when it says so ("new task", "unrelated", "switching to", ...), or
/// when it has at least four content words and shares none with the episode's recent messages.
/// Everything else continues the episode: a false "continue" only delays a boundary until the
/// turn cap, while a false "new task" splits one task's context in two.
#[derive(Clone, Copy, Debug, Default)]
pub struct LexicalClassifier;

impl LexicalClassifier {
    /// The decision, synchronously.
    pub fn decide(input: &ClassifyInput) -> EpisodeDecision {
        let text = input.message.content.to_lowercase();
        if NEW_TASK_MARKERS.iter().any(|m| text.contains(m)) {
            return EpisodeDecision::NewTask;
        }
        let words = content_words(&text);
        if input.recent.is_empty() || words.len() < MIN_WORDS_FOR_NEW_TASK {
            return EpisodeDecision::Continue;
        }
        let seen: std::collections::HashSet<String> = input
            .recent
            .iter()
            .flat_map(|m| {
                let calls = m.message.tool_calls.iter().map(|c| format!("{} {}", c.name, c.arguments));
                std::iter::once(m.message.content.to_lowercase()).chain(calls.map(|c| c.to_lowercase()))
            })
            .flat_map(|t| content_words(&t))
            .collect();
        if words.iter().any(|w| seen.contains(w)) { EpisodeDecision::Continue } else { EpisodeDecision::NewTask }
    }
}

/// Lower-case alphanumeric words of three or more characters that are not stopwords.
fn content_words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 3 && !STOPWORDS.contains(w))
        .map(str::to_string)
        .collect()
}

impl EpisodeClassifier for LexicalClassifier {
    fn name(&self) -> &str {
        "lexical"
    }

    fn classify(&self, input: ClassifyInput) -> BoxFuture<'_, Result<EpisodeDecision, Error>> {
        Box::pin(async move { Ok(Self::decide(&input)) })
    }
}

const CLASSIFY_SYSTEM: &str = "You group an AI agent's conversation into tasks. Given the current task's recent \
messages and a new user message, answer with exactly one word: CONTINUE if the new message continues the same \
task, NEW if it starts a different task.";

/// A classifier that asks an OpenAI-compatible model (the `summarizer.openai` endpoint). Any reply
/// but `CONTINUE` or `NEW` is an error, which the engine turns into a fallback "new task".
pub struct OpenAiClassifier {
    client: Arc<OpenAiSummarizer>,
}

impl OpenAiClassifier {
    /// A classifier using `client`'s endpoint, model and bounds.
    pub fn new(client: Arc<OpenAiSummarizer>) -> Self {
        Self { client }
    }
}

impl EpisodeClassifier for OpenAiClassifier {
    fn name(&self) -> &str {
        "openai"
    }

    fn classify(&self, input: ClassifyInput) -> BoxFuture<'_, Result<EpisodeDecision, Error>> {
        Box::pin(async move {
            let mut user = String::from("Current task, recent messages:\n");
            for m in &input.recent {
                let text = truncate_bytes(&m.message.content, CLASSIFY_MESSAGE_BYTES);
                user.push_str(&format!("{}: {text}\n", m.message.role));
            }
            user.push_str(&format!(
                "\nNew user message:\n{}\n\nAnswer CONTINUE or NEW.",
                truncate_bytes(&input.message.content, CLASSIFY_MESSAGE_BYTES)
            ));
            let reply = self.client.complete(CLASSIFY_SYSTEM, &user, "classify").await?;
            // `\x1b[1mNEW\x1b[0m` is a NEW: the reply is cleaned like any other model text.
            let reply = crate::summarizer::sanitize(&reply);
            let word = reply.trim().trim_matches(|c: char| !c.is_alphabetic()).to_ascii_uppercase();
            if word.starts_with("CONTINUE") {
                Ok(EpisodeDecision::Continue)
            } else if word.starts_with("NEW") {
                Ok(EpisodeDecision::NewTask)
            } else {
                Err(Error::Summarizer {
                    status: None,
                    message: format!(
                        "classifier reply is neither CONTINUE nor NEW: {:?}",
                        truncate_bytes(reply.trim(), 64)
                    ),
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(recent: &[&str], message: &str) -> ClassifyInput {
        ClassifyInput {
            session: SessionId::new("s").expect("valid"),
            episode: 0,
            episode_turns: recent.len() as u64,
            recent: recent
                .iter()
                .enumerate()
                .map(|(i, t)| StoredMessage { seq: Seq::new(i as u64 + 1), at_ms: 0, message: Message::user(*t) })
                .collect(),
            message: Message::user(message),
        }
    }

    #[test]
    fn lexical_classifier_follows_markers_and_overlap() {
        let recent = ["book a flight to Oslo on Friday", "the flight should leave in the morning"];
        assert_eq!(
            LexicalClassifier::decide(&input(&recent, "and a hotel near the station?")),
            EpisodeDecision::Continue
        );
        assert_eq!(
            LexicalClassifier::decide(&input(&recent, "make the Oslo flight cheaper")),
            EpisodeDecision::Continue
        );
        assert_eq!(
            LexicalClassifier::decide(&input(&recent, "write a poem about autumn leaves falling slowly")),
            EpisodeDecision::NewTask
        );
        assert_eq!(LexicalClassifier::decide(&input(&recent, "new task: flights again")), EpisodeDecision::NewTask);
        assert_eq!(
            LexicalClassifier::decide(&input(&[], "write a poem about autumn leaves")),
            EpisodeDecision::Continue
        );
    }
}
