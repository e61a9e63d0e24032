//! Test-only hooks, compiled in only with the `testing` cargo feature (never public API).
//!
//! Kill points: `kill_point(name)` aborts the process (SIGABRT, no unwinding, so no buffer is
//! flushed that a real crash would not flush) when the environment variable
//! `PALIMPSEST_KILL_AT` equals `name`. Without the feature it compiles to nothing.

/// The environment variable naming the kill point to die at.
#[cfg(feature = "testing")]
pub const KILL_AT_ENV: &str = "PALIMPSEST_KILL_AT";

/// Dies here if asked to (feature `testing` only).
#[inline]
pub(crate) fn kill_point(name: &str) {
    #[cfg(feature = "testing")]
    if std::env::var(KILL_AT_ENV).is_ok_and(|v| v == name) {
        std::process::abort();
    }
    #[cfg(not(feature = "testing"))]
    let _ = name;
}
