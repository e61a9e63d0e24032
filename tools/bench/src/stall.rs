//! p5: does a compaction in flight stall the agent's appends? A summarizer that takes 2 s keeps a
//! compaction of the session in flight while the same session appends; each append's latency is
//! compared with an idle phase of the same appends (same session, same message sizes).

use std::sync::Arc;
use std::time::{Duration, Instant};

use palimpsest::{
    BoxFuture, CompactionOutcome, CompactionRequest, Config, Durability, Engine, Error, Session, Summarizer,
    SummaryInput,
};
use serde_json::{Value, json};

use crate::Plan;
use crate::stats::{median, paired_ratio, percentile, round, us};
use crate::workload::{self, log, message};

/// How long the summarizer takes: a slow model call.
const SUMMARIZER_DELAY: Duration = Duration::from_secs(2);

/// The p99.9 variant's summarizer delay: short, so the compaction's own work (reading a
/// 100k-message span, the splice) is a large part of the time it is in flight.
const P999_SUMMARIZER_DELAY: Duration = Duration::from_millis(200);

/// Appends timed while a compaction is in flight, at most (the phase stops when it ends).
const P999_MAX_SAMPLES: usize = 200_000;

/// Appends timed in each idle phase of the p99.9 variant (p99.9 is then the 20th slowest).
const P999_IDLE_SAMPLES: usize = 20_000;

/// A summarizer that sleeps like a slow model, then returns a short text.
struct SlowSummarizer(Duration);

impl Summarizer for SlowSummarizer {
    fn name(&self) -> &str {
        "bench-slow"
    }

    fn summarize(&self, input: SummaryInput) -> BoxFuture<'_, Result<String, Error>> {
        let delay = self.0;
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Ok(format!("The user and the agent exchanged {} messages about deploys and logs.", input.messages.len()))
        })
    }
}

/// Latency in microseconds of each of `n` sequential appends, continuing the workload at `*next`.
async fn append_latencies_us(session: &Session, next: &mut u64, n: usize) -> Vec<f64> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let m = message(*next);
        let start = Instant::now();
        session.append(m).await.expect("append");
        samples.push(us(start.elapsed()));
        *next += 1;
    }
    samples
}

/// Runs p5; see the module docs.
pub async fn compaction_stall(plan: &Plan) -> Value {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut config = Config::new(dir.path());
    config.durability = Durability::Buffered;
    config.cache_mb = workload::CACHE_MB;
    // One summarizer call per compaction (no chunking), so "in flight" means one 2 s call.
    config.compaction.chunk_bytes = 16 << 20;
    let engine =
        Engine::open_with_summarizer(config, Arc::new(SlowSummarizer(SUMMARIZER_DELAY))).expect("opening the engine");
    let session = workload::session(&engine, "stall-bench");
    workload::build(&session, 0, plan.p5_session_messages).await;
    let mut next = plan.p5_session_messages;
    // Warm up the append path.
    append_latencies_us(&session, &mut next, 200).await;

    let (mut idle_p99, mut stalled_p99, mut idle_all, mut stalled_all) = (vec![], vec![], vec![], vec![]);
    let mut always_in_flight = true;
    for round_idx in 0..plan.p5_rounds {
        // Alternate which phase goes first, so neither always follows the previous splice.
        let idle_first = round_idx % 2 == 0;
        let mut idle =
            if idle_first { append_latencies_us(&session, &mut next, plan.p5_samples).await } else { vec![] };

        let compacting = session.clone();
        let compaction = tokio::spawn(async move { compacting.compact(CompactionRequest::default()).await });
        while engine.compactions_in_flight() != 1 {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let stalled = append_latencies_us(&session, &mut next, plan.p5_samples).await;
        always_in_flight &= engine.compactions_in_flight() == 1;
        let outcome = compaction.await.expect("the compaction task panicked").expect("compaction");
        assert!(matches!(outcome, CompactionOutcome::Spliced { .. }), "the compaction spliced: {outcome:?}");
        if !idle_first {
            idle = append_latencies_us(&session, &mut next, plan.p5_samples).await;
        }

        idle_p99.push(percentile(&idle, 99.0));
        stalled_p99.push(percentile(&stalled, 99.0));
        log(format!(
            "p5 round {round_idx}: append p50/p99 idle {:.1}/{:.1} us, with a compaction in flight {:.1}/{:.1} us",
            percentile(&idle, 50.0),
            idle_p99[round_idx],
            percentile(&stalled, 50.0),
            stalled_p99[round_idx]
        ));
        idle_all.extend(idle);
        stalled_all.extend(stalled);
    }
    assert!(always_in_flight, "the compaction stayed in flight through every stalled phase");
    json!({
        "p5_compaction_stall": round(paired_ratio(&stalled_p99, &idle_p99), 3),
        "p5_append_p99_us_stalled": round(median(&stalled_p99), 2),
        "p5_append_p99_us_idle": round(median(&idle_p99), 2),
        "p5_append_p50_us_stalled": round(percentile(&stalled_all, 50.0), 2),
        "p5_append_p50_us_idle": round(percentile(&idle_all, 50.0), 2),
        "p5_append_max_us_stalled": round(percentile(&stalled_all, 100.0), 2),
        "p5_append_max_us_idle": round(percentile(&idle_all, 100.0), 2),
        "p5_samples_per_phase": plan.p5_samples,
        "p5_rounds": plan.p5_rounds,
        "p5_summarizer_delay_ms": SUMMARIZER_DELAY.as_millis() as u64,
    })
}

/// p5 at p99.9 (`p5_p999_compaction_stall`): each round first extends the session by
/// `plan.p5_span_messages` messages (untimed), so the compaction that follows covers a span of that
/// many (`max_span_messages`); then times single appends for as long as that compaction is in
/// flight (reading the span, the summarizer call of [`P999_SUMMARIZER_DELAY`], the splice), and as
/// [`P999_IDLE_SAMPLES`] appends with nothing in flight. Rounds alternate which phase goes first. The ratio is the
/// median over rounds of stalled p99.9 / idle p99.9.
pub async fn compaction_stall_p999(plan: &Plan) -> Value {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut config = Config::new(dir.path());
    config.durability = Durability::Buffered;
    config.cache_mb = workload::CACHE_MB;
    config.compaction.max_span_messages = plan.p5_span_messages;
    // As large as allowed: two or three summarizer calls for a 100k-message span, not hundreds.
    config.compaction.chunk_bytes = 16 << 20;
    let engine = Engine::open_with_summarizer(config, Arc::new(SlowSummarizer(P999_SUMMARIZER_DELAY)))
        .expect("opening the engine");
    let session = workload::session(&engine, "stall-p999-bench");
    let mut next = 0;
    append_latencies_us(&session, &mut next, 200).await;

    let (mut idle_p999, mut stalled_p999, mut in_flight_ms) = (vec![], vec![], vec![]);
    for round_idx in 0..plan.p5_p999_rounds {
        workload::build(&session, next, plan.p5_span_messages).await;
        next += plan.p5_span_messages;
        let idle_first = round_idx % 2 == 0;
        let mut idle =
            if idle_first { append_latencies_us(&session, &mut next, P999_IDLE_SAMPLES).await } else { vec![] };

        let compacting = session.clone();
        let start = Instant::now();
        let compaction = tokio::spawn(async move { compacting.compact(CompactionRequest::default()).await });
        while engine.compactions_in_flight() != 1 && !compaction.is_finished() {
            tokio::task::yield_now().await;
        }
        let mut stalled = Vec::new();
        while engine.compactions_in_flight() == 1 && stalled.len() < P999_MAX_SAMPLES {
            stalled.extend(append_latencies_us(&session, &mut next, 1).await);
        }
        let outcome = compaction.await.expect("the compaction task panicked").expect("compaction");
        in_flight_ms.push(start.elapsed().as_secs_f64() * 1e3);
        let CompactionOutcome::Spliced { .. } = &outcome else {
            panic!("the compaction spliced: {outcome:?}");
        };
        if !idle_first {
            idle = append_latencies_us(&session, &mut next, P999_IDLE_SAMPLES).await;
        }
        assert!(stalled.len() >= 1000, "a p99.9 needs 1,000 samples; the compaction ended after {}", stalled.len());
        idle_p999.push(percentile(&idle, 99.9));
        stalled_p999.push(percentile(&stalled, 99.9));
        log(format!(
            "p5 p99.9 round {round_idx}: {} appends during a {:.0} ms compaction, p99.9 {:.1} us (max {:.1}); \
             idle ({} appends) p99.9 {:.1} us",
            stalled.len(),
            in_flight_ms[round_idx],
            stalled_p999[round_idx],
            percentile(&stalled, 100.0),
            idle.len(),
            idle_p999[round_idx]
        ));
    }
    json!({
        "p5_p999_compaction_stall": round(paired_ratio(&stalled_p999, &idle_p999), 3),
        "p5_append_p999_us_stalled": round(median(&stalled_p999), 2),
        "p5_append_p999_us_idle": round(median(&idle_p999), 2),
        "p5_p999_span_messages": plan.p5_span_messages,
        "p5_p999_compaction_ms": round(median(&in_flight_ms), 1),
        "p5_p999_rounds": plan.p5_p999_rounds,
        "p5_p999_summarizer_delay_ms": P999_SUMMARIZER_DELAY.as_millis() as u64,
    })
}
