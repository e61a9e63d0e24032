//! The one retry policy of model calls. A call that failed for a passing reason (the provider is
//! rate-limiting or overloaded: HTTP 429, 408, 500, 502, 503, 504; the connection was reset or
//! timed out while connecting) is tried again after a wait; any other failure (a refused key, a
//! bad request, a reply we refused, a request timeout) is returned at once. The wait is the
//! provider's `Retry-After` when it sent one (seconds or an HTTP date, capped at
//! `max_backoff_ms`, plus a little jitter so that calls told the same instant do not return
//! together), else full jitter: uniform in `0..=ceiling`, the ceiling taken from backon's
//! exponential schedule (`initial_backoff_ms`, doubling, capped at `max_backoff_ms`). Retries
//! are bounded by `max_retries` and by the call's deadline: a wait that would end past it is not
//! started, and the last failure is returned with how many retries were made and why they stopped.
//!
//! The deadline and the report of each retry come from the caller through a task-local
//! [`CallScope`] (the chunked driver sets one per chunk and merge call), not through the
//! [`Summarizer`](super::Summarizer) trait: the trait stays what a custom summarizer implements,
//! and a call made outside a scope (the episode classifier, the memory extractor, a direct
//! `summarize`) is bounded by the retry count and its caller's own timeout. Waits are
//! `tokio::time::sleep`, so tests drive them on tokio's paused clock.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::time::Instant;

use super::{MAX_PROVIDER_ERROR_BYTES, truncate_bytes};
use crate::config::RetryConfig;
use crate::error::Error;

/// HTTP statuses that say "later", not "never": rate limited, request timeout, and the server
/// errors that overloaded or restarting providers return.
const RETRYABLE_STATUSES: [u16; 6] = [429, 408, 500, 502, 503, 504];

/// A failure that may be retried, and what the provider said about when.
#[derive(Clone, Debug)]
pub(crate) struct Transient {
    /// The HTTP status, when the failure was a reply.
    pub(crate) status: Option<u16>,
    /// What went wrong, short: `HTTP 429`, `connection reset`.
    pub(crate) cause: String,
    /// The provider's `Retry-After`, uncapped.
    pub(crate) retry_after: Option<Duration>,
}

/// The outcome of one failed try: the error to surface, and whether trying again may help.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) error: Error,
    pub(crate) transient: Option<Transient>,
}

impl Failure {
    /// A failure that retrying cannot fix.
    pub(crate) fn fatal(error: Error) -> Self {
        Self { error, transient: None }
    }
}

/// One retry about to happen, reported to the caller's scope before its wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RetryNotice {
    /// 1 for the first retry.
    pub(crate) attempt: u64,
    pub(crate) wait: Duration,
    pub(crate) status: Option<u16>,
    pub(crate) cause: String,
}

/// What a caller lends the calls it makes: their deadline and where retries are reported.
pub(crate) struct CallScope {
    pub(crate) deadline: Instant,
    pub(crate) on_retry: Arc<dyn Fn(&RetryNotice) + Send + Sync>,
}

tokio::task_local! {
    static SCOPE: CallScope;
}

/// Runs `call` with `scope` visible to every retry inside it.
pub(crate) async fn scoped<F: Future>(scope: CallScope, call: F) -> F::Output {
    SCOPE.scope(scope, call).await
}

/// Whether a reply status is worth another try.
pub(crate) fn is_retryable_status(status: u16) -> bool {
    RETRYABLE_STATUSES.contains(&status)
}

/// Parses a `Retry-After` value: whole seconds, or an HTTP date (a date in the past is zero).
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}

/// The policy built from `summarizer.openai.retry`.
#[derive(Clone, Debug)]
pub(crate) struct RetryPolicy {
    max_retries: u64,
    initial_backoff: Duration,
    max_backoff: Duration,
}

impl RetryPolicy {
    pub(crate) fn new(cfg: &RetryConfig) -> Self {
        Self {
            max_retries: cfg.max_retries,
            initial_backoff: Duration::from_millis(cfg.initial_backoff_ms),
            max_backoff: Duration::from_millis(cfg.max_backoff_ms.max(cfg.initial_backoff_ms)),
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, runs out of retries, or the next wait
    /// would end past the scope's deadline.
    ///
    /// Cancel safety: dropping the future drops the try or the wait in progress; nothing is kept.
    pub(crate) async fn run<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let deadline = SCOPE.try_with(|s| s.deadline).ok();
        // The schedule of wait ceilings; it ends after `max_retries` items.
        let mut ceilings = ExponentialBuilder::new()
            .with_min_delay(self.initial_backoff)
            .with_max_delay(self.max_backoff)
            .with_factor(2.0)
            .with_max_times(usize::try_from(self.max_retries).unwrap_or(usize::MAX))
            .build();
        let mut retries = 0u64;
        loop {
            let Failure { error, transient } = match attempt().await {
                Ok(value) => return Ok(value),
                Err(failure) => failure,
            };
            let Some(transient) = transient else {
                return Err(if retries == 0 { error } else { gave_up(error, retries, "the last failure is final") });
            };
            let Some(ceiling) = ceilings.next() else {
                let why = format!("summarizer.openai.retry.max_retries = {}", self.max_retries);
                return Err(gave_up(error, retries, &why));
            };
            let wait = self.wait(ceiling, transient.retry_after);
            if let Some(deadline) = deadline
                && Instant::now() + wait >= deadline
            {
                let why = format!("a wait of {} ms would pass the call's deadline", millis(wait));
                return Err(gave_up(error, retries, &why));
            }
            retries += 1;
            let notice = RetryNotice { attempt: retries, wait, status: transient.status, cause: transient.cause };
            tracing::warn!(
                what,
                attempt = notice.attempt,
                wait_ms = millis(wait),
                status = ?notice.status,
                cause = %notice.cause,
                "model call failed for a passing reason; retrying"
            );
            let _ = SCOPE.try_with(|s| (s.on_retry)(&notice));
            tokio::time::sleep(wait).await;
        }
    }

    /// The wait before the next try: the provider's `Retry-After` (capped) plus up to one initial
    /// backoff of jitter, else full jitter under the schedule's ceiling.
    fn wait(&self, ceiling: Duration, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(asked) => (asked + jitter(self.initial_backoff)).min(self.max_backoff),
            None => jitter(ceiling),
        }
    }
}

/// Uniform in `0..=ceiling`, to the millisecond.
fn jitter(ceiling: Duration) -> Duration {
    Duration::from_millis(fastrand::u64(0..=millis(ceiling)))
}

/// The last failure, with how many retries came before it and why there is no other. The
/// provider's text is cut first so that the note always fits in the bound.
fn gave_up(error: Error, retries: u64, why: &str) -> Error {
    let note = format!(" (gave up after {retries} {}: {why})", if retries == 1 { "retry" } else { "retries" });
    let room = MAX_PROVIDER_ERROR_BYTES.saturating_sub(note.len());
    match error {
        Error::Summarizer { status, message } => Error::Summarizer {
            status,
            message: truncate_bytes(&format!("{}{note}", truncate_bytes(&message, room)), MAX_PROVIDER_ERROR_BYTES),
        },
        other => other,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_retries: u64) -> RetryPolicy {
        RetryPolicy::new(&RetryConfig { max_retries, initial_backoff_ms: 100, max_backoff_ms: 1_000 })
    }

    fn transient(status: u16, retry_after: Option<Duration>) -> Failure {
        Failure {
            error: Error::Summarizer { status: Some(status), message: "slow down".to_string() },
            transient: Some(Transient { status: Some(status), cause: format!("HTTP {status}"), retry_after }),
        }
    }

    #[test]
    fn only_passing_statuses_are_retried() {
        for status in [429, 408, 500, 502, 503, 504] {
            assert!(is_retryable_status(status), "{status}");
        }
        for status in [400, 401, 403, 404, 413, 422, 501] {
            assert!(!is_retryable_status(status), "{status}");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let parsed = parse_retry_after(&later).expect("a date parses");
        assert!(parsed > Duration::from_secs(100) && parsed <= Duration::from_secs(120), "{parsed:?}");
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn full_jitter_stays_under_each_doubling_ceiling() {
        let policy = policy(5);
        let started = Instant::now();
        let mut tries = 0u32;
        let result: Result<(), Error> = policy
            .run("test", || {
                tries += 1;
                async { Err(transient(503, None)) }
            })
            .await;
        // Ceilings 100, 200, 400, 800, 1000 ms: the sum bounds the virtual time waited.
        assert!(started.elapsed() <= Duration::from_millis(2_500), "{:?}", started.elapsed());
        assert_eq!(tries, 6);
        match result {
            Err(Error::Summarizer { status: Some(503), message }) => {
                assert!(message.contains("gave up after 5 retries"), "{message}");
                assert!(message.contains("max_retries = 5"), "{message}");
            }
            other => panic!("expected the last 503, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_capped_and_the_deadline_stops_retries() {
        let notices = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let seen = Arc::clone(&notices);
        let scope = CallScope {
            deadline: Instant::now() + Duration::from_millis(2_500),
            on_retry: Arc::new(move |n: &RetryNotice| seen.lock().push(n.clone())),
        };
        let policy = policy(10);
        let started = Instant::now();
        let result: Result<(), Error> = scoped(scope, async {
            policy.run("test", || async { Err(transient(429, Some(Duration::from_secs(60)))) }).await
        })
        .await;
        // Each wait is the 1 s cap; the third would end past 2.5 s, so it is not started.
        let waits: Vec<Duration> = notices.lock().iter().map(|n| n.wait).collect();
        assert_eq!(waits, vec![Duration::from_secs(1); 2]);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        match result {
            Err(Error::Summarizer { status: Some(429), message }) => {
                assert!(message.contains("gave up after 2 retries"), "{message}");
                assert!(message.contains("deadline"), "{message}");
            }
            other => panic!("expected the last 429, got {other:?}"),
        }
    }

    #[test]
    fn the_note_fits_in_the_bound() {
        let long = Error::Summarizer { status: Some(500), message: "x".repeat(MAX_PROVIDER_ERROR_BYTES) };
        match gave_up(long, 3, "a reason") {
            Error::Summarizer { message, .. } => {
                assert!(message.len() <= MAX_PROVIDER_ERROR_BYTES);
                assert!(message.ends_with("(gave up after 3 retries: a reason)"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
