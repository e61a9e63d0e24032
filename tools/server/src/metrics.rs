//! `GET /metrics` in Prometheus text format (prometheus-client): requests by route, method and
//! status, latency histograms by route, messages appended, replacements, write conflicts retried,
//! compactions, TTL deletions, refused authentications, and the engine's guard counters read at
//! scrape time.

use palimpsest::Engine;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route template (`/v1/working-memory/{session_id}`), or `unmatched`.
    pub route: String,
    /// The HTTP method.
    pub method: String,
    /// The status code.
    pub status: u16,
}

/// Labels of a latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route template.
    pub route: String,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    /// Requests answered.
    pub requests: Family<RequestLabels, Counter>,
    /// Request latency, seconds.
    pub latency: HistogramFamily,
    /// Messages appended (PUT appends, replacements' messages, the extension).
    pub messages_appended: Counter,
    /// PUTs recorded as replacements.
    pub replacements: Counter,
    /// Writes retried because the session changed between read and write.
    pub conflicts: Counter,
    /// Background compactions started.
    pub compactions_started: Counter,
    /// Background compactions that spliced.
    pub compactions_spliced: Counter,
    /// Background summarizations that failed.
    pub compactions_failed: Counter,
    /// Summarization checks skipped (one already in flight for the session, or the bound reached).
    pub compactions_skipped: Counter,
    /// Sessions deleted by the TTL sweep.
    pub ttl_deleted: Counter,
    /// Requests refused with 401.
    pub auth_failures: Counter,
    guard_lock_timeouts: Gauge,
    guard_background_permits_in_use: Gauge,
    guard_background_waiters: Gauge,
    guard_background_permit_timeouts: Gauge,
    guard_span_loads_in_use: Gauge,
    guard_span_load_waiters: Gauge,
    guard_span_load_timeouts: Gauge,
    guard_extractions_failed: Gauge,
    compactions_in_flight: Gauge,
    purges_pending: Gauge,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("palimpsest_serve");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests answered, by route, method and status", requests.clone());
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register("http_request_duration_seconds", "HTTP request latency by route", latency.clone());
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        Self {
            messages_appended: counter(&mut registry, "messages_appended", "Messages appended"),
            replacements: counter(&mut registry, "replacements", "PUTs recorded as replacements (reset + messages)"),
            conflicts: counter(
                &mut registry,
                "write_conflicts",
                "Writes retried because the session changed meanwhile",
            ),
            compactions_started: counter(&mut registry, "compactions_started", "Background compactions started"),
            compactions_spliced: counter(&mut registry, "compactions_spliced", "Background compactions that spliced"),
            compactions_failed: counter(&mut registry, "compactions_failed", "Background summarizations that failed"),
            compactions_skipped: counter(&mut registry, "compactions_skipped", "Summarization checks skipped"),
            ttl_deleted: counter(&mut registry, "ttl_deleted", "Sessions deleted by the TTL sweep"),
            auth_failures: counter(&mut registry, "auth_failures", "Requests refused with 401"),
            guard_lock_timeouts: gauge(&mut registry, "guard_lock_timeouts", "Namespace lock waits that ran out"),
            guard_background_permits_in_use: gauge(
                &mut registry,
                "guard_background_permits_in_use",
                "Background model permits in use",
            ),
            guard_background_waiters: gauge(
                &mut registry,
                "guard_background_waiters",
                "Tasks waiting for a background model permit",
            ),
            guard_background_permit_timeouts: gauge(
                &mut registry,
                "guard_background_permit_timeouts",
                "Background permit waits that ran out",
            ),
            guard_span_loads_in_use: gauge(
                &mut registry,
                "guard_span_loads_in_use",
                "Background span loads running (background.span_load_concurrency)",
            ),
            guard_span_load_waiters: gauge(
                &mut registry,
                "guard_span_load_waiters",
                "Background jobs waiting to load their span",
            ),
            guard_span_load_timeouts: gauge(
                &mut registry,
                "guard_span_load_timeouts",
                "Span-load permit waits that ran out",
            ),
            guard_extractions_failed: gauge(
                &mut registry,
                "guard_extractions_failed",
                "Memory extractions that failed",
            ),
            compactions_in_flight: gauge(&mut registry, "compactions_in_flight", "Compactions in flight"),
            purges_pending: gauge(&mut registry, "purges_pending", "Deletions whose purge is not finished"),
            requests,
            latency,
            registry,
        }
    }
}

fn as_gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Metrics {
    /// Counts one answered request.
    pub fn observe(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels { route: route.to_string(), method: method.to_string(), status })
            .inc();
        self.latency.get_or_create(&RouteLabels { route: route.to_string() }).observe(seconds);
    }

    /// The text exposition, with the engine's counters read now.
    pub fn render(&self, engine: &Engine) -> String {
        let g = engine.guard_stats();
        self.guard_lock_timeouts.set(as_gauge(g.lock_timeouts));
        self.guard_background_permits_in_use.set(as_gauge(g.background_permits_in_use));
        self.guard_background_waiters.set(as_gauge(g.background_waiters));
        self.guard_background_permit_timeouts.set(as_gauge(g.background_permit_timeouts));
        self.guard_span_loads_in_use.set(as_gauge(g.span_loads_in_use));
        self.guard_span_load_waiters.set(as_gauge(g.span_load_waiters));
        self.guard_span_load_timeouts.set(as_gauge(g.span_load_timeouts));
        self.guard_extractions_failed.set(as_gauge(g.extractions_failed));
        self.compactions_in_flight.set(as_gauge(engine.compactions_in_flight() as u64));
        self.purges_pending.set(as_gauge(engine.purges_pending()));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
