//! Databases too large to build on every run (one session of 10M messages for p8 and p9; 100k
//! sessions of 100 messages for p2's cold reads and p10) are built once into a cache directory and
//! reused by later runs. A cached database is reused only when its marker file, written after a
//! complete build and a clean close, names this bench's [`FORMAT_VERSION`] and the same shape, and
//! the database opens with its first and last sessions at their full length; anything else is
//! deleted and built again. Build time is reported separately from every measurement.
//!
//! Runs append to the cached sessions (p9, p10), so a reused database holds a few thousand more
//! messages than it was built with; the marker records what was built, the measurements read the
//! heads.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use palimpsest::{Config, Durability};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::raw::RawDb;
use crate::workload::{self, CACHE_MB, log, message};

/// Bumped whenever the workload's messages, the session ids or the build change, so a database
/// built by an older bench is rebuilt rather than measured.
pub const FORMAT_VERSION: u32 = 1;

/// Messages per `append_many` while building a cached database (the build raises
/// `limits.max_batch_messages` to this, within the engine's allowed range).
const BUILD_BATCH: u64 = 10_000;

/// Sessions built at once in a many-session database.
const BUILD_TASKS: usize = 4;

/// Free space kept on the disk after a build, bytes.
const FREE_SPACE_FLOOR_BYTES: u64 = 10 << 30;

/// Builds estimated below this need no free-space check.
const SMALL_BUILD_BYTES: u64 = 1 << 30;

/// Stored bytes per message, generously (event about 250 bytes before compression, plus the
/// journal written while building), for the free-space check.
const BYTES_PER_MESSAGE_ESTIMATE: u64 = 600;

const MARKER: &str = "complete.json";

/// The shape of a cached database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    /// Sessions in the database.
    pub sessions: u64,
    /// Messages per session.
    pub per_session: u64,
    /// Also keep a raw fjall copy of its events and heads (for side-by-side reads).
    pub raw_copy: bool,
}

/// What the marker file records.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    bench_format: u32,
    spec: Spec,
    build_s: f64,
}

/// A cached database, ready to open.
pub struct Cached {
    /// The engine's database directory.
    pub db: PathBuf,
    /// The raw copy's directory, when the spec asks for one.
    pub raw: Option<PathBuf>,
    /// The session ids, in build order.
    pub ids: Vec<String>,
    /// Seconds the build took (the run that built it, or an earlier one).
    pub build_s: f64,
    /// True when this run built it.
    pub built_now: bool,
}

impl Spec {
    /// The directory name: the shape and the format version.
    fn dir_name(&self) -> String {
        let raw = if self.raw_copy { "-raw" } else { "" };
        format!("s{}-m{}{raw}-v{FORMAT_VERSION}", self.sessions, self.per_session)
    }

    /// Session ids, in build order.
    pub fn ids(&self) -> Vec<String> {
        if self.sessions == 1 {
            vec!["scale-session".to_string()]
        } else {
            (0..self.sessions).map(|i| format!("session-{i:06}")).collect()
        }
    }

    fn messages(&self) -> u64 {
        self.sessions * self.per_session
    }
}

/// The default cache directory: under the system temp dir, never inside the repository.
pub fn default_dir() -> PathBuf {
    std::env::temp_dir().join("palimpsest-bench-cache")
}

/// Returns the cached database of shape `spec` under `cache_dir`, building it first when it is
/// missing or fails validation (or always, with `fresh`). `None` when the disk lacks room.
pub async fn ensure(cache_dir: &Path, spec: &Spec, fresh: bool) -> Option<Cached> {
    let root = cache_dir.join(spec.dir_name());
    let (db, raw) = (root.join("db"), root.join("raw"));
    let ids = spec.ids();
    let raw_path = spec.raw_copy.then(|| raw.clone());
    if !fresh && let Some(build_s) = validate(&root, spec, &ids).await {
        log(format!("reusing the cached database {} (built in {build_s:.1} s)", root.display()));
        return Some(Cached { db, raw: raw_path, ids, build_s, built_now: false });
    }
    if root.exists() {
        std::fs::remove_dir_all(&root).expect("removing a stale cached database");
    }
    std::fs::create_dir_all(&root).expect("creating the cache directory");
    let needed = spec.messages() * BYTES_PER_MESSAGE_ESTIMATE * if spec.raw_copy { 2 } else { 1 };
    // Small builds (tests, stand-ins of a few hundred MB) are not held to the floor.
    if needed >= SMALL_BUILD_BYTES
        && let Some(free) = free_bytes(&root)
        && free < needed + FREE_SPACE_FLOOR_BYTES
    {
        log(format!(
            "not building {}: {} GB free, {} GB needed plus {} GB kept free",
            root.display(),
            free >> 30,
            needed >> 30,
            FREE_SPACE_FLOOR_BYTES >> 30
        ));
        let _ = std::fs::remove_dir_all(&root);
        return None;
    }
    log(format!("building {} ({} sessions x {} messages)", root.display(), spec.sessions, spec.per_session));
    let start = Instant::now();
    build(&db, spec, &ids).await;
    if spec.raw_copy {
        let copied = RawDb::open(&raw).copy_from_engine_dir(&db);
        assert!(copied >= spec.messages(), "the raw copy holds every event: {copied} copied");
        RawDb::flush_dir(&raw);
    }
    let build_s = start.elapsed().as_secs_f64();
    let marker = Marker { bench_format: FORMAT_VERSION, spec: spec.clone(), build_s };
    let text = serde_json::to_string(&marker).expect("the marker serializes");
    std::fs::write(root.join(MARKER), text).expect("writing the cache marker");
    log(format!("built {} in {build_s:.1} s", root.display()));
    Some(Cached { db, raw: raw_path, ids, build_s, built_now: true })
}

/// The build time recorded by a valid cached database at `root`, or `None`.
async fn validate(root: &Path, spec: &Spec, ids: &[String]) -> Option<f64> {
    let text = std::fs::read_to_string(root.join(MARKER)).ok()?;
    let marker: Marker = serde_json::from_str(&text).ok()?;
    if marker.bench_format != FORMAT_VERSION || marker.spec != *spec {
        return None;
    }
    if spec.raw_copy && !root.join("raw").is_dir() {
        return None;
    }
    let mut config = Config::new(root.join("db"));
    config.cache_mb = CACHE_MB;
    let engine = palimpsest::Engine::open(config).ok()?;
    for id in [ids.first()?, ids.last()?] {
        let session = engine.session(id.as_str()).ok()?;
        let head = session.head().await.ok()??;
        if head.n_messages() < spec.per_session {
            log(format!("the cached session {id} holds {} messages, fewer than built", head.n_messages()));
            return None;
        }
    }
    Some(marker.build_s)
}

/// Builds the engine database of `spec` at `db` and closes it (a clean close flushes memtables).
async fn build(db: &Path, spec: &Spec, ids: &[String]) {
    let mut config = Config::new(db);
    config.durability = Durability::Buffered;
    config.cache_mb = CACHE_MB;
    config.limits.max_batch_messages = BUILD_BATCH;
    let engine = workload::open_config(config);
    let mut tasks = JoinSet::new();
    let mut built = 0u64;
    for id in ids {
        if tasks.len() == BUILD_TASKS {
            tasks.join_next().await.expect("a task is in flight").expect("a build task panicked");
        }
        let session = workload::session(&engine, id);
        let per_session = spec.per_session;
        tasks.spawn(async move { build_session(&session, per_session).await });
        built += 1;
        if built.is_multiple_of(10_000) {
            log(format!("built {built} of {} sessions", ids.len()));
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a build task panicked");
    }
}

/// Appends `n` workload messages to an empty `session`, in batches of [`BUILD_BATCH`].
async fn build_session(session: &palimpsest::Session, n: u64) {
    let mut idx = 0;
    while idx < n {
        let end = (idx + BUILD_BATCH).min(n);
        session.append_many((idx..end).map(message).collect()).await.expect("building a cached session");
        idx = end;
        if n >= 1_000_000 && idx.is_multiple_of(1_000_000) {
            log(format!("built {idx} of {n} messages"));
        }
    }
}

/// Reads every file under `dir` once (bounded buffer), so later reads find them in the OS page
/// cache; returns the bytes read. Files that vanish meanwhile (fjall's own maintenance) are skipped.
pub fn read_files(dir: &Path) -> u64 {
    use std::io::Read as _;
    let mut total = 0;
    let mut buf = vec![0u8; 1 << 20];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(mut file) = std::fs::File::open(&path) {
                while let Ok(n) = file.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
            }
        }
    }
    total
}

/// Free bytes on the file system holding `path` (`df`), or `None` when `df` is unavailable.
fn free_bytes(path: &Path) -> Option<u64> {
    let output = Command::new("df").arg("-B1").arg("--output=avail").arg(path).output().ok()?;
    String::from_utf8(output.stdout).ok()?.lines().nth(1)?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime")
    }

    #[test]
    fn a_cached_database_is_reused_only_with_its_format_and_shape() {
        let cache_dir = tempfile::tempdir().expect("a temp dir");
        let spec = Spec { sessions: 3, per_session: 8, raw_copy: true };
        let rt = runtime();
        let first = rt.block_on(ensure(cache_dir.path(), &spec, false)).expect("room on the disk");
        assert!(first.built_now, "an empty cache builds");
        assert_eq!(first.ids.len(), 3);
        let raw = first.raw.as_ref().expect("a raw copy was asked for");
        let copied = RawDb::engine_event_rows(raw, &first.ids[2]).len();
        assert!(copied >= 8, "the raw copy holds the last session's events: {copied}");

        let again = rt.block_on(ensure(cache_dir.path(), &spec, false)).expect("room on the disk");
        assert!(!again.built_now, "a complete, matching database is reused");

        // Another bench format: rebuilt, never measured.
        let marker = cache_dir.path().join(spec.dir_name()).join(MARKER);
        let text = std::fs::read_to_string(&marker).expect("the marker exists");
        let stale = text.replace(&format!("\"bench_format\":{FORMAT_VERSION}"), "\"bench_format\":0");
        assert_ne!(stale, text, "the marker records the format");
        std::fs::write(&marker, stale).expect("rewriting the marker");
        let rebuilt = rt.block_on(ensure(cache_dir.path(), &spec, false)).expect("room on the disk");
        assert!(rebuilt.built_now, "a database of another bench format is rebuilt");

        // A build that never finished (no marker) is rebuilt too; and `fresh` always rebuilds.
        std::fs::remove_file(&marker).expect("removing the marker");
        assert!(rt.block_on(ensure(cache_dir.path(), &spec, false)).expect("room").built_now);
        assert!(rt.block_on(ensure(cache_dir.path(), &spec, true)).expect("room").built_now);
    }
}
