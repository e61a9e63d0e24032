//! Test-only hooks, compiled in only with the `testing` cargo feature (never public API otherwise).
//!
//! - Kill points: `kill_point(name)` aborts the process (no unwinding, so nothing is flushed that a
//!   real crash would not flush) when `PALIMPSEST_KILL_AT` names this point, at its
//!   `PALIMPSEST_KILL_AFTER`-th hit (default the first). Without the feature it compiles to nothing.
//! - Storage faults: a [`Fault`] armed on an engine makes the store fail at one kind of call
//!   ([`FaultPoint`]), once, always, or at random, after letting a number of such calls through,
//!   so a test can move the failure point forward through an operation as SQLite's I/O-error
//!   tests do. On fjall the calls are checked by `storage::faulty::Faulty`, the store wrapping
//!   fjall in test builds; on JetStream by the backend's commit (`FaultPoint::Commit` only).

/// The environment variable naming the kill point to die at.
#[cfg(feature = "testing")]
pub const KILL_AT_ENV: &str = "PALIMPSEST_KILL_AT";
/// The environment variable giving which hit of that kill point dies (1-based, default 1).
#[cfg(feature = "testing")]
pub const KILL_AFTER_ENV: &str = "PALIMPSEST_KILL_AFTER";

/// Every kill point, in the order a write or compaction reaches them.
#[cfg(feature = "testing")]
pub const KILL_POINTS: [&str; 6] = [
    "write:before_commit",
    "store:after_write_before_sync",
    "write:after_commit",
    "compaction:after_blob",
    "compaction:before_splice",
    "compaction:after_splice",
];

#[cfg(feature = "testing")]
mod enabled {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    use parking_lot::Mutex;

    use crate::error::Error;

    struct KillAt {
        name: String,
        after: u64,
        hits: AtomicU64,
    }

    fn kill_at() -> Option<&'static KillAt> {
        static KILL: OnceLock<Option<KillAt>> = OnceLock::new();
        KILL.get_or_init(|| {
            let name = std::env::var(super::KILL_AT_ENV).ok()?;
            let after = std::env::var(super::KILL_AFTER_ENV).ok().and_then(|n| n.parse().ok()).unwrap_or(1);
            Some(KillAt { name, after, hits: AtomicU64::new(0) })
        })
        .as_ref()
    }

    pub(crate) fn kill_point(name: &str) {
        if let Some(k) = kill_at()
            && k.name == name
            && k.hits.fetch_add(1, Ordering::SeqCst) + 1 >= k.after
        {
            std::process::abort();
        }
    }

    /// Which kind of storage call fails.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum FaultPoint {
        /// A batch commit fails before anything is written.
        Commit,
        /// A batch commit writes its batch, then reports failure.
        AfterCommit,
        /// The fsync after a written batch fails (`sync` durability only).
        Persist,
        /// A read (point read or scan) fails.
        Read,
        /// A batch commit panics before anything is written (a bug below the engine).
        CommitPanics,
    }

    /// How often the armed fault fires.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum FaultMode {
        /// At the first matching call after `after` have passed, then never again.
        Once,
        /// At every matching call after `after` have passed.
        Always,
        /// At each matching call after `after`, with probability 1/`one_in` (seeded, repeatable).
        Random {
            /// The odds: the fault fires at about one matching call in `one_in` (0 counts as 1).
            one_in: u64,
            /// Seeds the generator, so the same seed fires at the same calls.
            seed: u64,
        },
    }

    /// A fault to inject at the storage boundary.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Fault {
        /// Where.
        pub point: FaultPoint,
        /// Matching calls let through before the fault can fire.
        pub after: u64,
        /// How often.
        pub mode: FaultMode,
    }

    /// The armed fault of one store, and how many matching calls it has seen.
    #[derive(Default)]
    pub(crate) struct Faults {
        armed: Mutex<Option<(Fault, u64, u64)>>,
        fired: AtomicU64,
    }

    impl Faults {
        pub(crate) fn arm(&self, fault: Option<Fault>) {
            *self.armed.lock() = fault.map(|f| {
                let seed = match f.mode {
                    FaultMode::Random { seed, .. } => seed,
                    _ => 0,
                };
                (f, 0, seed)
            });
        }

        pub(crate) fn fired(&self) -> u64 {
            self.fired.load(Ordering::SeqCst)
        }

        /// Fails if the armed fault fires at this call of kind `point`.
        pub(crate) fn check(&self, point: FaultPoint) -> Result<(), Error> {
            let mut armed = self.armed.lock();
            let Some((fault, seen, rng)) = armed.as_mut() else { return Ok(()) };
            if fault.point != point {
                return Ok(());
            }
            *seen += 1;
            if *seen <= fault.after {
                return Ok(());
            }
            let fire = match fault.mode {
                FaultMode::Once | FaultMode::Always => true,
                FaultMode::Random { one_in, .. } => {
                    *rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                    (*rng >> 33) % one_in.max(1) == 0
                }
            };
            if !fire {
                return Ok(());
            }
            if fault.mode == FaultMode::Once {
                *armed = None;
            }
            self.fired.fetch_add(1, Ordering::SeqCst);
            Err(Error::storage("injected fault", format!("{point:?}")))
        }
    }
}

#[cfg(feature = "testing")]
pub use enabled::{Fault, FaultMode, FaultPoint};
#[cfg(feature = "testing")]
pub(crate) use enabled::{Faults, kill_point};

/// Without the `testing` feature a kill point is nothing.
#[cfg(not(feature = "testing"))]
#[inline(always)]
pub(crate) fn kill_point(_name: &str) {}
