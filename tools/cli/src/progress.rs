//! Progress on stderr: indicatif bars and spinners when stderr is a terminal, nothing at all when
//! it is not (a pipe, a file, a CI log), so piped output is only the result.
//!
//! Every bar belongs to one [`MultiProgress`] for the whole process, and the log writer
//! ([`crate::log`]) prints through [`suspend`], so a log line never tears a bar.

use std::io::IsTerminal as _;
use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a spinner redraws on its own while the work gives no news.
const TICK_INTERVAL: Duration = Duration::from_millis(120);

/// The process's one set of bars, drawn on stderr when it is a terminal and hidden otherwise.
fn multi() -> &'static MultiProgress {
    static MULTI: OnceLock<MultiProgress> = OnceLock::new();
    MULTI.get_or_init(|| {
        let target =
            if std::io::stderr().is_terminal() { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        MultiProgress::with_draw_target(target)
    })
}

/// True when progress is drawn (stderr is a terminal).
pub fn visible() -> bool {
    !multi().is_hidden()
}

/// Runs `f` (which writes to stderr) with the bars cleared, then draws them again.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    multi().suspend(f)
}

/// A bar or spinner on stderr; every method does nothing when progress is hidden. Dropping it
/// clears it.
pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    /// A bar counting to `len` units of `unit` (`"events"`, `"chunks"`), prefixed by `what`.
    pub fn counting(what: &str, len: u64, unit: &str) -> Self {
        let style = ProgressStyle::with_template(&format!(
            "{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{elapsed}}, eta {{eta}})"
        ))
        .expect("the template is a valid constant")
        .progress_chars("=> ");
        Self::add(ProgressBar::new(len).with_style(style).with_prefix(what.to_string()))
    }

    /// A spinner counting `unit` with no known total, prefixed by `what`.
    pub fn spinner(what: &str, unit: &str) -> Self {
        let style = ProgressStyle::with_template(&format!("{{spinner}} {{prefix}} {{pos}} {unit} ({{elapsed}})"))
            .expect("the template is a valid constant");
        let bar = Self::add(ProgressBar::new_spinner().with_style(style).with_prefix(what.to_string()));
        bar.bar.enable_steady_tick(TICK_INTERVAL);
        bar
    }

    /// A spinner with no count, for work that reports nothing until it ends.
    pub fn busy(what: &str) -> Self {
        let style =
            ProgressStyle::with_template("{spinner} {prefix} ({elapsed})").expect("the template is a valid constant");
        let bar = Self::add(ProgressBar::new_spinner().with_style(style).with_prefix(what.to_string()));
        bar.bar.enable_steady_tick(TICK_INTERVAL);
        bar
    }

    fn add(bar: ProgressBar) -> Self {
        Self { bar: multi().add(bar) }
    }

    /// Sets the count.
    pub fn set(&self, position: u64) {
        self.bar.set_position(position);
    }

    /// Adds to the count.
    pub fn inc(&self, delta: u64) {
        self.bar.inc(delta);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
        multi().remove(&self.bar);
    }
}
