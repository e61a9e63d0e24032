//! Shared by the power-loss harnesses: the mounted file system, the child processes and their
//! report lines, and the round loop (spawn a writer, cut the power at a random report, kill it,
//! restore power, run a verifier child and compare its dump with what was acknowledged).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use std::cell::Cell;

use powerloss::{Cut, CutReport, Model, Mount};

/// Longest a child may stay silent before the harness calls it stuck.
pub const CHILD_SILENCE_LIMIT: Duration = Duration::from_secs(120);
/// Most report lines the harness waits for before it cuts the power.
pub const MAX_LINES_BEFORE_CUT: u64 = 60;

/// Most further file writes before an armed cut fires.
pub const MAX_WRITES_BEFORE_CUT: u64 = 64;

/// The power-loss file system over a tmpfs backing directory (fast: the backing is written at
/// fsync time, never fsynced itself), with the temp dirs it lives in.
pub struct Rig {
    pub mount: Mount,
    /// The disk model, from `PALIMPSEST_POWERLOSS_MODEL` (`strict_dirs`, `delalloc`, both
    /// comma-separated; default: neither).
    pub model: Model,
    /// Directory operations the cuts undid, and undos that failed (`strict_dirs`).
    reverted: Cell<(u64, u64)>,
    /// Files the cuts left zero-filled past their durable data (`delalloc`).
    zero_filled: Cell<u64>,
    _backing: tempfile::TempDir,
    _mountpoint: tempfile::TempDir,
}

impl Rig {
    pub fn new() -> Self {
        powerloss::preflight().expect("this harness needs FUSE (run scripts/setup-fuse.sh)");
        let shm = Path::new("/dev/shm");
        let backing = if shm.is_dir() {
            tempfile::Builder::new().prefix("powerloss-").tempdir_in(shm).expect("backing dir")
        } else {
            tempfile::tempdir().expect("backing dir")
        };
        let mountpoint = tempfile::tempdir().expect("mount point");
        let model = Model::parse(&std::env::var("PALIMPSEST_POWERLOSS_MODEL").unwrap_or_default())
            .expect("PALIMPSEST_POWERLOSS_MODEL");
        let mount =
            Mount::with_model(backing.path(), mountpoint.path(), model).expect("mount the power-loss file system");
        Self {
            mount,
            model,
            reverted: Cell::new((0, 0)),
            zero_filled: Cell::new(0),
            _backing: backing,
            _mountpoint: mountpoint,
        }
    }

    /// The disk model and what its cuts did to directories, for the summary line.
    pub fn model_summary(&self) -> String {
        let (reverted, errors) = self.reverted.get();
        format!(
            "model {:?}, {reverted} directory operations undone by cuts ({errors} undos failed), {} files left \
             zero-filled past their durable data",
            self.model,
            self.zero_filled.get()
        )
    }

    /// Cuts the power inside the file system right after `writes` more file writes, so the cut
    /// lands in the middle of the writer's work (a journal append, a table or version being
    /// written), then waits for it; if no write comes within the silence limit, cuts at once.
    pub fn cut_mid_work(&self, cut: Cut, writes: u64) -> CutReport {
        self.mount.arm_cut(cut, writes);
        let report = match self.mount.wait_for_armed_cut(CHILD_SILENCE_LIMIT) {
            Some(report) => report,
            None => self.mount.cut(cut),
        };
        let (reverted, errors) = self.reverted.get();
        self.reverted.set((reverted + report.entries_reverted, errors + report.revert_errors));
        self.zero_filled.set(self.zero_filled.get() + report.zero_filled_files);
        report
    }

    pub fn db(&self, generation: u64) -> PathBuf {
        self.mount.path().join(format!("db-{generation}"))
    }
}

/// A child running this same test binary with `env` set; its stdout lines arrive on a channel.
pub struct Child {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    reader: std::thread::JoinHandle<()>,
}

impl Child {
    pub fn spawn(env: &[(&str, String)]) -> Self {
        Self::spawn_with_stderr(env, Stdio::null())
    }

    /// A verifier: its stderr reaches the test's, so a verifier that dies (a panic in recovery,
    /// an abort) says why instead of leaving an empty report.
    pub fn spawn_verifier(env: &[(&str, String)]) -> Self {
        Self::spawn_with_stderr(env, Stdio::inherit())
    }

    fn spawn_with_stderr(env: &[(&str, String)], stderr: Stdio) -> Self {
        let mut command = Command::new(std::env::current_exe().expect("exe"));
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.stdout(Stdio::piped()).stderr(stderr).spawn().expect("spawn child");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines, reader }
    }

    /// Waits for up to `n` lines; fewer if the child ends first.
    pub fn take(&mut self, n: u64, round: u64) -> Vec<String> {
        let mut out = Vec::new();
        while (out.len() as u64) < n {
            match self.lines.recv_timeout(CHILD_SILENCE_LIMIT) {
                Ok(line) => out.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(e) => panic!("round {round}: child stopped reporting: {e:?}"),
            }
        }
        out
    }

    /// SIGKILLs the child and returns every line it wrote before dying.
    pub fn kill(mut self) -> Vec<String> {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
        self.reader.join().expect("reader");
        self.lines.try_iter().collect()
    }

    /// Waits for the child to exit by itself and returns all its lines.
    pub fn finish(mut self, round: u64) -> Vec<String> {
        let lines = self.take(u64::MAX, round);
        self.child.wait().expect("reap");
        self.reader.join().expect("reader");
        lines
    }
}

/// How the power is cut in `round`: mostly dropping all unsynced data, every third round tearing it.
pub fn cut_for(round: u64, seed: u64) -> Cut {
    if round % 3 == 2 { Cut::Torn { seed } } else { Cut::DropAll }
}

/// Rounds to run: `PALIMPSEST_POWERLOSS_ROUNDS`, else `default`.
pub fn rounds(default: u64) -> u64 {
    std::env::var("PALIMPSEST_POWERLOSS_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(default)
}

pub fn digest(text: &[u8]) -> String {
    blake3::hash(text).to_hex()[..16].to_string()
}

pub fn seed_from_clock() -> u64 {
    std::env::var("PALIMPSEST_POWERLOSS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos() as u64
    })
}

/// Files under `dir` whose parent directory is named `tables` (fjall's table files): evidence
/// that memtables were flushed while the harness ran.
pub fn table_files(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut n = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            n += table_files(&path);
        } else if dir.file_name().is_some_and(|name| name == "tables") {
            n += 1;
        }
    }
    n
}
