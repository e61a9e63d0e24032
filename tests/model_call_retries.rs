//! Model calls survive a rate-limited or flaky provider: against a scripted OpenAI-compatible
//! server on 127.0.0.1, a 429 with `Retry-After` is retried after the wait it asks, a 503 until it
//! passes, a connection cut mid-reply is retried, a 401 fails at once, and retries stop at the
//! chunk's deadline with the last error and how many retries were made. A provider admitting five
//! requests a second (a token bucket) is ridden out by a 200-chunk compaction, which settles at
//! fewer chunks in flight instead of failing. Retries never change a summary: a deterministic
//! server gives the same splice with failures on the way as without. All on tokio's paused clock.

mod common;

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{engine_with, snapshot};
use palimpsest::{
    CompactionOutcome, CompactionRequest, Config, Error, Message, OpenAiConfig, OpenAiSummarizer, RetryConfig, Stage,
    Summarizer, SummaryHash, SummaryInput, SummaryTask,
};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// How the server answers one request.
enum Answer {
    /// Status, `Retry-After` value, and the time taken before answering.
    Reply { status: u16, retry_after: Option<&'static str>, latency: Duration },
    /// Headers promising a long body, part of it, then the connection cut: reset (`rst`) or closed.
    CutMidBody { rst: bool },
}

impl Answer {
    fn ok() -> Self {
        Answer::Reply { status: 200, retry_after: None, latency: Duration::ZERO }
    }

    fn status(status: u16) -> Self {
        Answer::Reply { status, retry_after: None, latency: Duration::ZERO }
    }
}

/// Decides each answer from the request's number (0-based, in arrival order).
type Script = Box<dyn Fn(usize) -> Answer + Send + Sync>;

/// What the server saw: arrival time and answered status of each request (0 for a cut
/// connection), how many it held when each arrived, and the most it held at once.
#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<(Instant, u16)>>,
    held_at_arrival: Mutex<Vec<usize>>,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
}

impl Seen {
    fn arrivals(&self) -> Vec<Instant> {
        self.requests.lock().iter().map(|(at, _)| *at).collect()
    }

    fn count(&self, status: u16) -> usize {
        self.requests.lock().iter().filter(|(_, s)| *s == status).count()
    }
}

/// Serves requests on 127.0.0.1:0, one per connection, as `script` says. A successful reply's
/// text depends only on the request's user message, so the server is deterministic.
async fn serve(script: Script) -> (String, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let (seen, script) = (Arc::new(Seen::default()), Arc::new(script));
    let served = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let (seen, script) = (Arc::clone(&served), Arc::clone(&script));
            tokio::spawn(async move {
                let request = read_request(&mut stream).await;
                let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                seen.peak_in_flight.fetch_max(now, Ordering::SeqCst);
                seen.held_at_arrival.lock().push(now);
                let n = {
                    let mut requests = seen.requests.lock();
                    requests.push((Instant::now(), 0));
                    requests.len() - 1
                };
                let answer = script(n);
                if let Answer::Reply { status, .. } = &answer {
                    seen.requests.lock()[n].1 = *status;
                }
                answer_with(&mut stream, answer, &request).await;
                seen.in_flight.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (base_url, seen)
}

async fn answer_with(stream: &mut TcpStream, answer: Answer, request: &Value) {
    match answer {
        Answer::Reply { status, retry_after, latency } => {
            tokio::time::sleep(latency).await;
            let body = if status == 200 {
                let user = request["messages"][1]["content"].as_str().unwrap_or_default();
                let mut hasher = DefaultHasher::new();
                user.hash(&mut hasher);
                let text = format!("summary {:016x}", hasher.finish());
                json!({"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})
            } else {
                json!({"error": {"message": format!("scripted {status}")}})
            }
            .to_string();
            let retry_after = retry_after.map(|v| format!("retry-after: {v}\r\n")).unwrap_or_default();
            let head = format!(
                "HTTP/1.1 {status} Scripted\r\ncontent-type: application/json\r\n{retry_after}\
                 content-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
        Answer::CutMidBody { rst } => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 4000\r\n\r\n";
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(br#"{"choices":[{"message":{"content":"half a re"#).await;
            let _ = stream.flush().await;
            if rst {
                // A zero linger makes the close a reset (RST), as a crashing proxy's would be.
                stream.set_zero_linger().unwrap();
            }
        }
    }
}

/// Reads one HTTP/1.1 request with a `content-length` body and returns the body as JSON.
async fn read_request(stream: &mut TcpStream) -> Value {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "client closed before the request head ended");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_ascii_lowercase();
    let length: usize =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
    let mut body = buf[header_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "client closed before the body ended");
        body.extend_from_slice(&chunk[..n]);
    }
    serde_json::from_slice(&body).unwrap()
}

fn openai(base_url: &str, retry: RetryConfig) -> OpenAiConfig {
    OpenAiConfig { base_url: base_url.to_string(), api_key: Some("k".to_string()), retry, ..OpenAiConfig::default() }
}

/// Retries whose jitter is at most 1 ms, so waits are the provider's `Retry-After` to the ms.
fn tight_retry(max_retries: u64) -> RetryConfig {
    RetryConfig { max_retries, initial_backoff_ms: 1, max_backoff_ms: 30_000 }
}

fn input() -> SummaryInput {
    SummaryInput {
        task: SummaryTask::Whole,
        previous_summary: None,
        messages: Vec::new(),
        partials: Vec::new(),
        focus: None,
        max_summary_bytes: 4_096,
    }
}

/// One direct call (no compaction, so no deadline but the retry count).
async fn summarize(script: Script, retry: RetryConfig) -> (Result<String, Error>, Arc<Seen>) {
    let (base_url, seen) = serve(script).await;
    let summarizer = OpenAiSummarizer::new(&openai(&base_url, retry)).unwrap();
    (summarizer.summarize(input()).await, seen)
}

#[tokio::test(start_paused = true)]
async fn a_429_with_retry_after_is_retried_once_after_the_wait_it_asks() {
    let script: Script = Box::new(|n| match n {
        0 => Answer::Reply { status: 429, retry_after: Some("2"), latency: Duration::ZERO },
        _ => Answer::ok(),
    });
    let (result, seen) = summarize(script, tight_retry(5)).await;
    assert!(result.unwrap().starts_with("summary "));
    let arrivals = seen.arrivals();
    assert_eq!(arrivals.len(), 2, "one retry");
    let gap = arrivals[1] - arrivals[0];
    assert!(gap >= Duration::from_secs(2) && gap <= Duration::from_millis(2_001), "waited {gap:?}");
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_given_as_an_http_date_is_honoured() {
    let date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(5));
    let date: &'static str = Box::leak(date.into_boxed_str());
    let script: Script = Box::new(move |n| match n {
        0 => Answer::Reply { status: 503, retry_after: Some(date), latency: Duration::ZERO },
        _ => Answer::ok(),
    });
    let (result, seen) = summarize(script, tight_retry(5)).await;
    result.unwrap();
    let arrivals = seen.arrivals();
    // The date has a one-second resolution and the wall clock moved on while we set up.
    let gap = arrivals[1] - arrivals[0];
    assert!(gap >= Duration::from_secs(3) && gap <= Duration::from_millis(5_001), "waited {gap:?}");
}

#[tokio::test(start_paused = true)]
async fn a_503_three_times_then_success_takes_three_retries_and_changes_nothing() {
    // Through a compaction, so the retries show as progress and the splice can be compared with
    // one made against a server that never failed.
    let flaky: Script = Box::new(|n| if n < 3 { Answer::status(503) } else { Answer::ok() });
    let steady: Script = Box::new(|_| Answer::ok());
    let (flaky_hash, flaky_stages, flaky_seen) = compact_one_pass(flaky).await;
    let (steady_hash, _, _) = compact_one_pass(steady).await;
    assert_eq!(flaky_hash, steady_hash, "a retried call gives the same summary");
    assert_eq!(flaky_seen.count(503), 3);
    assert_eq!(flaky_seen.count(200), 1);
    let retries: Vec<(Option<u64>, u64, Option<u16>)> = flaky_stages
        .iter()
        .filter_map(|s| match s {
            Stage::Retry { index, attempt, status, .. } => Some((*index, *attempt, *status)),
            _ => None,
        })
        .collect();
    assert_eq!(retries, vec![(Some(0), 1, Some(503)), (Some(0), 2, Some(503)), (Some(0), 3, Some(503))]);
}

/// Compacts a short session in one pass against `script`; returns the summary's hash, the
/// progress stages, and what the server saw.
async fn compact_one_pass(script: Script) -> (SummaryHash, Vec<Stage>, Arc<Seen>) {
    let (base_url, seen) = serve(script).await;
    let summarizer = Arc::new(OpenAiSummarizer::new(&openai(&base_url, tight_retry(5))).unwrap());
    let (engine, _dir) = engine_with(summarizer, |c| c.compaction.keep_last_messages = 0);
    let s = engine.session("flaky").unwrap();
    for i in 0..6 {
        s.append(Message::user(format!("step {i}: deploy the billing service"))).await.unwrap();
    }
    let mut progress = engine.subscribe_progress();
    let outcome = s.compact(CompactionRequest::default()).await.unwrap();
    let CompactionOutcome::Spliced { summary_hash, .. } = outcome else { panic!("not spliced: {outcome:?}") };
    let stages = std::iter::from_fn(|| progress.try_recv().ok()).map(|p| p.stage).collect();
    (summary_hash, stages, seen)
}

#[tokio::test(start_paused = true)]
async fn a_401_fails_at_once_without_a_retry() {
    let (result, seen) = summarize(Box::new(|_| Answer::status(401)), tight_retry(5)).await;
    match result {
        Err(Error::Summarizer { status: Some(401), message }) => assert_eq!(message, "scripted 401"),
        other => panic!("expected the 401, got {other:?}"),
    }
    assert_eq!(seen.arrivals().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_connection_reset_or_closed_mid_body_is_retried() {
    for rst in [true, false] {
        let script: Script = Box::new(move |n| if n == 0 { Answer::CutMidBody { rst } } else { Answer::ok() });
        let (result, seen) = summarize(script, tight_retry(5)).await;
        assert!(result.as_deref().is_ok_and(|t| t.starts_with("summary ")), "rst {rst}: {result:?}");
        assert_eq!(seen.arrivals().len(), 2, "rst {rst}: one retry");
    }
}

#[tokio::test(start_paused = true)]
async fn retries_stop_at_the_chunk_deadline_with_the_last_error() {
    let script: Script = Box::new(|_| Answer::Reply { status: 503, retry_after: Some("2"), latency: Duration::ZERO });
    let (base_url, seen) = serve(script).await;
    let summarizer = Arc::new(OpenAiSummarizer::new(&openai(&base_url, tight_retry(20))).unwrap());
    let (engine, _dir) = engine_with(summarizer, |c| {
        c.compaction.keep_last_messages = 0;
        c.compaction.chunk_timeout_ms = 5_000;
    });
    let s = engine.session("deadline").unwrap();
    for i in 0..4 {
        s.append(Message::user(format!("step {i}"))).await.unwrap();
    }
    let before = snapshot(&s).await;
    let started = Instant::now();
    let err = s.compact(CompactionRequest::default()).await.unwrap_err();
    // Tries at 0, 2 and 4 s; a third wait would end at 6 s, past the 5 s deadline.
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(seen.arrivals().len(), 3);
    match err {
        Error::Summarizer { status: Some(503), message } => {
            assert!(message.starts_with("scripted 503 (gave up after 2 retries: "), "{message}");
            assert!(message.contains("deadline"), "{message}");
        }
        other => panic!("expected the last 503, got {other:?}"),
    }
    assert_eq!(snapshot(&s).await, before, "a failed compaction changes nothing");
}

/// The token bucket of the rate-limited provider: `RATE_PER_S` requests a second, bursts of as many.
const RATE_PER_S: f64 = 5.0;
/// Chunks of the large compaction, and the configured chunks in flight.
const N_CHUNKS: usize = 200;
const CHUNK_CONCURRENCY: u64 = 8;
/// How long an admitted request takes: with this, 8 calls in flight ask for 8 requests a second.
const MODEL_LATENCY: Duration = Duration::from_secs(1);

struct Bucket {
    tokens: f64,
    at: Instant,
}

fn rate_limited() -> Script {
    let bucket = Mutex::new(Bucket { tokens: RATE_PER_S, at: Instant::now() });
    Box::new(move |_| {
        let mut b = bucket.lock();
        let now = Instant::now();
        b.tokens = (b.tokens + (now - b.at).as_secs_f64() * RATE_PER_S).min(RATE_PER_S);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Answer::Reply { status: 200, retry_after: None, latency: MODEL_LATENCY }
        } else {
            Answer::Reply { status: 429, retry_after: Some("1"), latency: Duration::ZERO }
        }
    })
}

/// Compacts a session of `N_CHUNKS` one-message chunks against `script`.
async fn compact_chunked(script: Script) -> (SummaryHash, Vec<Stage>, Arc<Seen>, Duration) {
    let (base_url, seen) = serve(script).await;
    let retry = RetryConfig { max_retries: 10, initial_backoff_ms: 500, max_backoff_ms: 10_000 };
    let summarizer = Arc::new(OpenAiSummarizer::new(&openai(&base_url, retry)).unwrap());
    let (engine, _dir) = engine_with(summarizer, |c: &mut Config| {
        c.episodes.max_turns_per_episode = 200;
        c.compaction.keep_last_messages = 0;
        c.compaction.chunk_bytes = 1 << 10;
        c.compaction.chunk_concurrency = CHUNK_CONCURRENCY;
    });
    let s = engine.session("large").unwrap();
    for i in 0..N_CHUNKS {
        // About 1 KiB each, so that each message is a chunk of its own.
        s.append(Message::user(format!("request {i}: {}", "lorem ipsum ".repeat(80)))).await.unwrap();
    }
    let mut progress = engine.subscribe_progress();
    let started = Instant::now();
    let outcome = s.compact(CompactionRequest::default()).await.unwrap();
    let elapsed = started.elapsed();
    let CompactionOutcome::Spliced { summary_hash, .. } = outcome else { panic!("not spliced: {outcome:?}") };
    let stages = std::iter::from_fn(|| progress.try_recv().ok()).map(|p| p.stage).collect();
    (summary_hash, stages, seen, elapsed)
}

#[tokio::test(start_paused = true)]
async fn a_rate_limited_provider_is_ridden_out_with_fewer_chunks_in_flight() {
    let (hash, stages, seen, elapsed) = compact_chunked(rate_limited()).await;
    let n_chunks = stages.iter().find_map(|s| match s {
        Stage::Strategy { n_chunks, .. } => Some(*n_chunks),
        _ => None,
    });
    assert_eq!(n_chunks, Some(N_CHUNKS as u64));
    let concurrency: Vec<u64> = stages
        .iter()
        .filter_map(|s| match s {
            Stage::Retry { concurrency, .. } => Some(*concurrency),
            _ => None,
        })
        .collect();
    let n_429 = seen.count(429);
    let peak = seen.peak_in_flight.load(Ordering::SeqCst);
    // Requests arriving in any one second: admitted (a bucket's burst plus a second of refill)
    // and refused; the bound is what the server may see with `CHUNK_CONCURRENCY` calls in flight.
    let arrivals = seen.arrivals();
    let busiest_second = arrivals
        .iter()
        .map(|&from| arrivals.iter().filter(|&&at| at >= from && at < from + Duration::from_secs(1)).count())
        .max()
        .unwrap_or(0);
    // The calls in flight the provider saw over the second half of the run, once settled.
    let held = seen.held_at_arrival.lock().clone();
    let settled = &held[held.len() / 2..];
    let settled_mean = settled.iter().sum::<usize>() as f64 / settled.len().max(1) as f64;
    eprintln!(
        "rate-limited run: {N_CHUNKS} chunks, {} requests, {n_429} answered 429, virtual time {:.1} s, \
         peak in flight at the server {peak}, busiest second {busiest_second} requests, in flight over \
         the second half {}..={} (mean {settled_mean:.1}), concurrency after each retry {concurrency:?}",
        arrivals.len(),
        elapsed.as_secs_f64(),
        settled.iter().min().unwrap_or(&0),
        settled.iter().max().unwrap_or(&0),
    );
    assert_eq!(seen.count(200), N_CHUNKS + 1, "every chunk and the merge, once each");
    assert!(peak <= CHUNK_CONCURRENCY as usize, "the server held {peak} requests at once");
    let limit = 2 * RATE_PER_S as usize + CHUNK_CONCURRENCY as usize;
    assert!(busiest_second <= limit, "{busiest_second} requests in one second, over {limit}");
    // Fewer refusals than chunks: the herd backs off instead of hammering the provider.
    assert!(n_429 < N_CHUNKS / 2, "{n_429} requests refused");
    assert!(concurrency.iter().any(|&c| c < CHUNK_CONCURRENCY), "the limit never came down: {concurrency:?}");

    let (steady_hash, _, steady_seen, _) = compact_chunked(Box::new(|_| Answer::ok())).await;
    assert_eq!(steady_seen.count(429), 0);
    assert_eq!(hash, steady_hash, "retries change no summary");
}
