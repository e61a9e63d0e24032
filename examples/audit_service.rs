//! An audit in a service: a long-running process that keeps its engine open can check its own
//! database now and then, on a blocking thread, while it goes on serving writes. The audit reads
//! one snapshot, so concurrent appends never make it report a false violation. The service also
//! exports its guard counters (lock retries and timeouts, background permits, extraction) and
//! pending purges, the figures an operator graphs.
//!
//! Run it with `cargo run --example audit_service`. Offline, in about a second. It exits 1 if an
//! audit finds a violation (a healthy database never does).

use std::time::Duration;

use palimpsest::{AuditOptions, AuditReport, Config, Engine, Message};

/// Health checks the example runs.
const ROUNDS: usize = 3;
/// Sessions the "traffic" writes to.
const SESSIONS: usize = 8;

/// One health check: the audit on a blocking thread (it reads every log), then the guard counters.
async fn health_check(engine: &Engine) -> Result<AuditReport, Box<dyn std::error::Error>> {
    let auditing = engine.clone();
    let report = tokio::task::spawn_blocking(move || {
        // The callback sees the number of events read so far: feed it to a metric or a log.
        auditing.audit(&AuditOptions::default(), &mut |events| tracing_like("audit progress", events))
    })
    .await??;
    let guards = engine.guard_stats();
    println!(
        "health: ok={} sessions={} events={} violations={} orphan_blobs={} | lock_timeouts={} permits_in_use={}/{} \
         extractions_pending={} purges_pending={}",
        report.ok,
        report.sessions,
        report.events,
        report.violations.len(),
        report.orphan_blobs.len(),
        guards.lock_timeouts,
        guards.background_permits_in_use,
        guards.background_permits,
        guards.extractions_pending,
        engine.purges_pending()
    );
    for v in &report.violations {
        println!("  violation {} in {:?} at {:?}: {}", v.kind.as_str(), v.session, v.seq, v.detail);
    }
    Ok(report)
}

/// Stands in for the service's own metrics or logs.
fn tracing_like(what: &str, value: u64) {
    if value > 0 {
        println!("  {what}: {value}");
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(Config::new(dir.path().join("memory")))?;
    let mut healthy = true;
    for round in 0..ROUNDS {
        // Traffic, written while the previous check's snapshot may still be read.
        let writers: Vec<_> = (0..SESSIONS)
            .map(|i| {
                let session = engine.session(format!("tenant-{i}:chat"));
                tokio::spawn(async move {
                    let session = session?;
                    for n in 0..10 {
                        session.append(Message::user(format!("round {round}, message {n}"))).await?;
                    }
                    Ok::<_, palimpsest::Error>(())
                })
            })
            .collect();
        let report = health_check(&engine).await?;
        healthy &= report.ok;
        for writer in writers {
            writer.await??;
        }
    }
    // A deletion is one small batch; the purge runs in the background and the check sees it.
    engine.session("tenant-0:chat")?.delete().await?;
    engine.wait_for_purges(Duration::from_secs(10));
    healthy &= health_check(&engine).await?.ok;
    if !healthy {
        eprintln!("audit found violations: stop writing, copy the database, see README \"Operating it\"");
        std::process::exit(1);
    }
    Ok(())
}
