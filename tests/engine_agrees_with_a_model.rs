//! Model-based property (feature `testing`): random sequences of up to 200 operations drive the
//! real engine and a simple in-memory model side by side - appends (user turns, assistant turns
//! with tool calls, tool results), compactions that start, then finish, fail or are cancelled
//! while appends go on, reopens (which cancel an in-flight compaction, as a crash would),
//! injected storage failures, and resets (`Session::update` replacing the messages, which abandons a
//! compaction in flight) - and after every step the two must agree on the log, the working
//! memory and the compaction outcome. The model plans its cuts with its own obvious
//! implementation of the pair-safe rule. Working memory is read twice per step at two window
//! sizes, so the engine's head and window caches are read after every kind of write (appends,
//! splices, failed writes) and across reopens, and must agree with the model's window each time.
//!
//! On fjall every case has a database of its own. On JetStream (a 3-node cluster started here, a
//! fortieth of the cases) every case has a session of its own on shared streams; a reopen connects
//! a new engine (its head and window caches empty), and an injected failure refuses the append
//! before anything is published.

mod common;
#[cfg(feature = "nats")]
mod nats_common;
#[cfg(feature = "nats")]
mod nats_properties;

use std::sync::Arc;
use std::time::Duration;

use common::FnSummarizer;
use palimpsest::{
    BoundaryReason, CompactionOutcome, CompactionRequest, Config, Durability, Engine, Error, EventKind, Fault,
    FaultMode, FaultPoint, Message, Seq, SessionUpdate, Stage, ToolCall,
};
use parking_lot::Mutex;
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};
use tokio::sync::oneshot;

#[derive(Clone, Debug)]
enum Op {
    User,
    Calls(u8),
    Result(u8),
    StartCompaction(u8),
    FinishCompaction,
    FailCompaction,
    CancelCompaction,
    Reopen,
    FailedWrite,
    /// `Session::update` with a reset and one user message (a replacement, as `palimpsest serve` writes it).
    Reset,
}

impl Arbitrary for Op {
    fn arbitrary(g: &mut Gen) -> Self {
        match u8::arbitrary(g) % 20 {
            0..=4 => Op::User,
            5..=7 => Op::Calls(u8::arbitrary(g) % 3 + 1),
            8..=10 => Op::Result(u8::arbitrary(g)),
            11 | 12 => Op::StartCompaction(u8::arbitrary(g)),
            13 | 14 => Op::FinishCompaction,
            15 => Op::FailCompaction,
            16 => Op::CancelCompaction,
            17 => Op::Reopen,
            18 => Op::Reset,
            _ => Op::FailedWrite,
        }
    }
}

/// What the model remembers of each event (`TurnCap`: the boundary the turn cap writes before a user message).
#[derive(Clone, Debug, PartialEq)]
enum Ev {
    Msg(Message),
    Splice { upto: u64, text: String },
    TurnCap { episode: u64 },
    Reset,
}

/// `episodes.max_turns_per_episode` of the engine under test (the default).
const MAX_TURNS: u64 = 30;

#[derive(Default)]
struct Model {
    log: Vec<Ev>,
    open: Vec<(String, u64)>,
    upto: u64,
    summary: Option<String>,
    episode: u64,
    episode_turns: u64,
    /// Seq of the latest reset (0: none): the log before it is history, not working memory.
    base: u64,
    /// Messages since the start or the latest reset (a reset is written only when there are some).
    live_messages: u64,
}

impl Model {
    fn last(&self) -> u64 {
        self.log.len() as u64
    }

    /// The window rule, written out plainly: the last `limit` messages after the summary, minus
    /// any tool result whose call is not among them.
    fn window(&self, limit: usize) -> Vec<(u64, Message)> {
        let after: Vec<(u64, Message)> = (self.log.iter().enumerate())
            .filter_map(|(i, e)| match e {
                Ev::Msg(m) if i as u64 + 1 > self.upto => Some((i as u64 + 1, m.clone())),
                _ => None,
            })
            .collect();
        let last = &after[after.len().saturating_sub(limit)..];
        let calls: Vec<&str> = last.iter().flat_map(|(_, m)| m.tool_calls.iter().map(|c| c.id.as_str())).collect();
        last.iter().filter(|(_, m)| m.tool_call_id.as_deref().is_none_or(|id| calls.contains(&id))).cloned().collect()
    }

    /// The obvious pair-safe planner: cut before the earliest call at or before the cut whose
    /// result is not also at or before it; repeat.
    fn plan(&self, requested: u64) -> Option<(u64, usize)> {
        let mut cut = requested;
        loop {
            if cut <= self.upto {
                return None;
            }
            let answered_by = |id: &str, limit: u64| {
                self.log[..limit as usize]
                    .iter()
                    .any(|e| matches!(e, Ev::Msg(m) if m.tool_call_id.as_deref() == Some(id)))
            };
            // Calls before the lower bound are summarized (answered by then) or dropped by a reset.
            let blocker =
                self.log[..cut as usize].iter().enumerate().skip(self.upto as usize).find_map(|(i, e)| match e {
                    Ev::Msg(m) if m.tool_calls.iter().any(|c| !answered_by(&c.id, cut)) => Some(i as u64 + 1),
                    _ => None,
                });
            match blocker {
                None => break,
                Some(call_seq) => cut = call_seq - 1,
            }
        }
        let n = self.log[self.upto as usize..cut as usize].iter().filter(|e| matches!(e, Ev::Msg(_))).count();
        Some((cut, n))
    }
}

type Gate = Arc<Mutex<Option<oneshot::Sender<Result<(), Error>>>>>;

/// Where a case's engines keep their logs.
enum Backend {
    Fjall(std::path::PathBuf),
    #[cfg(feature = "nats")]
    Nats(palimpsest::NatsConfig),
}

async fn open(backend: &Backend, gate: &Gate) -> Engine {
    let gate = Arc::clone(gate);
    let summarizer = FnSummarizer::new(move |input| {
        let gate = Arc::clone(&gate);
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            *gate.lock() = Some(tx);
            rx.await.unwrap_or(Err(Error::Closed))?;
            Ok(format!("summary of {} messages", input.messages.len()))
        })
    });
    match backend {
        Backend::Fjall(dir) => {
            let mut config = Config::new(dir);
            config.durability = Durability::Buffered;
            Engine::open_with_summarizer(config, summarizer).expect("open")
        }
        #[cfg(feature = "nats")]
        Backend::Nats(nats) => nats_properties::connect(nats, summarizer, |_| {}).await,
    }
}

struct InFlight {
    task: tokio::task::JoinHandle<Result<CompactionOutcome, Error>>,
    plan: Option<(u64, usize)>,
    /// A reset landed while it summarized: the splice's re-check must abandon it.
    reset_since: bool,
}

/// Cancels an in-flight compaction the way a crash or a caller dropping the future would.
async fn cancel(in_flight: Option<InFlight>, gate: &Gate) {
    if let Some(InFlight { task, .. }) = in_flight {
        task.abort();
        let _ = task.await;
        gate.lock().take();
    }
}

async fn check(engine: &Engine, id: &str, model: &Model) -> Result<(), String> {
    let s = engine.session(id).map_err(|e| e.to_string())?;
    let history = match s.history(Seq::new(1), 10_000).await {
        Ok(h) => h,
        Err(Error::NotFound { .. }) if model.log.is_empty() => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    let got: Vec<Ev> = history
        .iter()
        .map(|e| match &e.kind {
            EventKind::MessageAppended(m) => Ev::Msg(m.clone().with_created_at_ms(0)),
            EventKind::CompactionSpliced(sp) => Ev::Splice { upto: sp.upto.get(), text: String::new() },
            EventKind::EpisodeBoundary { episode, reason: BoundaryReason::TurnCap } => {
                Ev::TurnCap { episode: *episode }
            }
            EventKind::MessagesReset { .. } => Ev::Reset,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    // History starts at the latest reset (the events before it stay stored, for audit and export).
    let want: Vec<Ev> = model.log[model.base.saturating_sub(1) as usize..]
        .iter()
        .map(|e| match e {
            Ev::Splice { upto, .. } => Ev::Splice { upto: *upto, text: String::new() },
            m => m.clone(),
        })
        .collect();
    if got != want {
        return Err(format!("log differs:\n engine {got:?}\n model  {want:?}"));
    }
    for limit in [3, 3, 1_000] {
        let wm = s.working_memory(limit).await.map_err(|e| e.to_string())?;
        let got: Vec<(u64, Message)> =
            wm.messages.iter().map(|m| (m.seq.get(), m.message.clone().with_created_at_ms(0))).collect();
        let want = model.window(limit);
        if got != want {
            return Err(format!("working_memory({limit}) differs:\n engine {got:?}\n model  {want:?}"));
        }
        if wm.n_messages != Some(model.live_messages) {
            return Err(format!("working_memory({limit}) counts {:?} messages", wm.n_messages));
        }
    }
    let wm = s.working_memory(1_000).await.map_err(|e| e.to_string())?;
    let summary = wm.summary.map(|s| (s.upto.get(), s.text));
    let want_summary = model.summary.clone().map(|t| (model.upto, t));
    if summary != want_summary {
        return Err(format!("summary {summary:?} != model {want_summary:?}"));
    }
    let first_after = wm.messages.first().map(|m| m.seq.get());
    if first_after.is_some_and(|f| f <= model.upto) {
        return Err(format!("window starts at {first_after:?}, inside the summary up to {}", model.upto));
    }
    Ok(())
}

fn prop_engine_agrees_with_the_model(ops: Vec<Op>) -> TestResult {
    let dir = common::fast_tempdir();
    engine_agrees_with_the_model(&Backend::Fjall(dir.path().to_path_buf()), "m", ops)
}

/// The cluster's config, set by the JetStream test for the length of its quickcheck run.
#[cfg(feature = "nats")]
static NATS_CONFIG: Mutex<Option<palimpsest::NatsConfig>> = Mutex::new(None);

#[cfg(feature = "nats")]
fn prop_engine_agrees_with_the_model_on_nats(ops: Vec<Op>) -> TestResult {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let config = NATS_CONFIG.lock().clone().expect("the test sets the cluster's config");
    let id = format!("m-{}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    engine_agrees_with_the_model(&Backend::Nats(config), &id, ops)
}

fn engine_agrees_with_the_model(backend: &Backend, id: &str, ops: Vec<Op>) -> TestResult {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let gate: Gate = Arc::new(Mutex::new(None));
    let result: Result<(), String> = rt.block_on(async {
        let mut engine = open(backend, &gate).await;
        let mut model = Model::default();
        let mut in_flight: Option<InFlight> = None;
        let mut next_call = 0;
        for (step, op) in ops.into_iter().enumerate() {
            let s = engine.session(id).map_err(|e| e.to_string())?;
            let append = |m: Message| {
                let s = s.clone();
                async move { s.append(m).await.map_err(|e| format!("step {step}: {e}")) }
            };
            match op {
                Op::User => {
                    append(Message::user(format!("turn {step}"))).await?;
                    if model.episode_turns == MAX_TURNS {
                        model.log.push(Ev::TurnCap { episode: model.episode });
                        (model.episode, model.episode_turns) = (model.episode + 1, 0);
                    }
                    model.log.push(Ev::Msg(Message::user(format!("turn {step}"))));
                    model.episode_turns += 1;
                    model.live_messages += 1;
                }
                Op::Calls(n) => {
                    let calls: Vec<ToolCall> = (0..n)
                        .map(|_| {
                            next_call += 1;
                            ToolCall::new(format!("c{next_call}"), "tool", "{}")
                        })
                        .collect();
                    let m = Message::assistant_tool_calls("", calls.clone());
                    append(m.clone()).await?;
                    model.log.push(Ev::Msg(m));
                    model.live_messages += 1;
                    let seq = model.last();
                    model.open.extend(calls.into_iter().map(|c| (c.id, seq)));
                }
                Op::Result(pick) if !model.open.is_empty() => {
                    let (id, _) = model.open.remove(usize::from(pick) % model.open.len());
                    let m = Message::tool_result(&id, "done");
                    append(m.clone()).await?;
                    model.log.push(Ev::Msg(m));
                    model.live_messages += 1;
                }
                Op::Reset => {
                    let m = Message::user(format!("fresh {step}"));
                    let update = SessionUpdate { reset: true, messages: vec![m.clone()], ..SessionUpdate::default() };
                    let out = s.update(update).await.map_err(|e| format!("step {step}: {e}"))?;
                    let written = model.live_messages > 0;
                    if written {
                        model.log.push(Ev::Reset);
                        (model.base, model.upto, model.summary, model.live_messages) =
                            (model.last(), model.last(), None, 0);
                        model.open.clear();
                        if let Some(f) = in_flight.as_mut() {
                            f.reset_since = true;
                        }
                    }
                    // A reset is written only over live messages, and then at the model's seq.
                    if out.reset.map(Seq::get) != written.then_some(model.base) {
                        return Err(format!(
                            "step {step}: reset at {:?}, model {written} at {}",
                            out.reset, model.base
                        ));
                    }
                    if model.episode_turns == MAX_TURNS {
                        model.log.push(Ev::TurnCap { episode: model.episode });
                        (model.episode, model.episode_turns) = (model.episode + 1, 0);
                    }
                    model.log.push(Ev::Msg(m));
                    model.episode_turns += 1;
                    model.live_messages += 1;
                }
                Op::Result(_) => {}
                Op::StartCompaction(x) if in_flight.is_none() && model.last() > 0 => {
                    let requested = u64::from(x) % model.last() + 1;
                    let plan = model.plan(requested);
                    let mut progress = engine.subscribe_progress();
                    let task = tokio::spawn({
                        let s = s.clone();
                        async move { s.compact(CompactionRequest::upto(Seq::new(requested))).await }
                    });
                    if plan.is_some() {
                        // Wait until the compaction is inside the summarizer.
                        loop {
                            let p = tokio::time::timeout(Duration::from_secs(10), progress.recv())
                                .await
                                .map_err(|_| format!("step {step}: compaction never reached the summarizer"))?
                                .map_err(|e| e.to_string())?;
                            if matches!(p.stage, Stage::Strategy { .. }) {
                                break;
                            }
                        }
                        in_flight = Some(InFlight { task, plan, reset_since: false });
                    } else {
                        let outcome = task.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
                        if !matches!(outcome, CompactionOutcome::NothingToCompact { .. }) {
                            return Err(format!("step {step}: model planned nothing, engine gave {outcome:?}"));
                        }
                    }
                }
                Op::StartCompaction(_) => {}
                Op::FinishCompaction | Op::FailCompaction if in_flight.is_some() => {
                    let InFlight { task, plan, reset_since } = in_flight.take().expect("checked");
                    let fail = matches!(op, Op::FailCompaction);
                    let release =
                        if fail { Err(Error::Summarizer { status: None, message: "no".into() }) } else { Ok(()) };
                    gate.lock().take().expect("the summarizer waits").send(release).map_err(|_| "gate closed")?;
                    let outcome = task.await.map_err(|e| e.to_string())?;
                    let (upto, n) = plan.expect("in flight only with a plan");
                    match (fail, outcome) {
                        (true, Err(Error::Summarizer { .. })) => {}
                        (false, Ok(CompactionOutcome::Abandoned { .. })) if reset_since => {}
                        (false, Ok(CompactionOutcome::Spliced { upto: got, .. }))
                            if got.get() == upto && !reset_since =>
                        {
                            let text = format!("summary of {n} messages");
                            model.log.push(Ev::Splice { upto, text: text.clone() });
                            model.upto = upto;
                            model.summary = Some(text);
                        }
                        (_, other) => return Err(format!("step {step}: compaction to {upto} gave {other:?}")),
                    }
                }
                Op::CancelCompaction => cancel(in_flight.take(), &gate).await,
                Op::FinishCompaction | Op::FailCompaction => {}
                Op::Reopen => {
                    cancel(in_flight.take(), &gate).await;
                    drop(s);
                    // Background extraction jobs keep the database open while they run: drain them first (SPEC 6b).
                    engine.drain(std::time::Duration::from_secs(30), true).await;
                    drop(engine);
                    engine = open(backend, &gate).await;
                }
                Op::FailedWrite => {
                    engine.inject_fault(Some(Fault { point: FaultPoint::Commit, after: 0, mode: FaultMode::Once }));
                    match s.append(Message::user("lost")).await {
                        Err(Error::Storage { .. }) => {}
                        other => return Err(format!("step {step}: injected failure gave {other:?}")),
                    }
                    cancel(in_flight.take(), &gate).await;
                    drop(s);
                    // Background extraction jobs keep the database open while they run: drain them first (SPEC 6b).
                    engine.drain(std::time::Duration::from_secs(30), true).await;
                    drop(engine);
                    engine = open(backend, &gate).await;
                }
            }
            if in_flight.is_none() {
                check(&engine, id, &model).await.map_err(|e| format!("after step {step} ({op:?}): {e}"))?;
            }
        }
        Ok(())
    });
    match result {
        Ok(()) => TestResult::passed(),
        Err(e) => TestResult::error(e),
    }
}

#[test]
fn the_engine_agrees_with_a_simple_model() {
    QuickCheck::new().rng(Gen::new(200)).quickcheck(prop_engine_agrees_with_the_model as fn(Vec<Op>) -> TestResult);
}

/// The same property on a 3-node JetStream cluster, a quarter of `nats_properties::cluster_cases`.
#[cfg(feature = "nats")]
#[test]
fn the_engine_agrees_with_a_simple_model_on_jetstream() {
    nats_properties::quickcheck_with_streams(
        &NATS_CONFIG,
        "model",
        // Up to 200 operations a case, each checked by reading the whole log back: a quarter.
        nats_properties::cluster_cases() / 4,
        200,
        prop_engine_agrees_with_the_model_on_nats as fn(Vec<Op>) -> TestResult,
    );
}
