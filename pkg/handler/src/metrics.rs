//! Prometheus metrics of event loops, labelled with the loop's name.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The label set of every metric: `loop="<name>"`.
type Labels = [(&'static str, String); 1];

/// Processing times from 1 ms to about 33 s.
fn processing_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The metrics of every [`EventLoop`](crate::EventLoop) made with them, one series per loop
/// name. Cheap to clone; register them once with [`Metrics::register`].
///
/// | metric | type | meaning |
/// |---|---|---|
/// | `ktrigger_handler_queue_depth` | gauge | keys waiting to be processed, retries included |
/// | `ktrigger_handler_adds_total` | counter | changes added to the queue (coalesced ones too) |
/// | `ktrigger_handler_retries_total` | counter | failed keys scheduled again after a backoff |
/// | `ktrigger_handler_dropped_total` | counter | changes dropped: queue full, or retries exhausted |
/// | `ktrigger_handler_processing_seconds` | histogram | time spent in one handler callback |
#[derive(Clone, Debug)]
pub struct Metrics {
    depth: Family<Labels, Gauge>,
    adds: Family<Labels, Counter>,
    retries: Family<Labels, Counter>,
    dropped: Family<Labels, Counter>,
    processing: Family<Labels, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            depth: Family::default(),
            adds: Family::default(),
            retries: Family::default(),
            dropped: Family::default(),
            processing: Family::new_with_constructor(processing_histogram),
        }
    }
}

impl Metrics {
    /// Metrics not registered anywhere yet.
    pub fn new() -> Self {
        Metrics::default()
    }

    /// Adds the metrics to `registry` (which prefixes its own prefix, if any).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "ktrigger_handler_queue_depth",
            "Keys waiting to be processed, retries included",
            self.depth.clone(),
        );
        registry.register("ktrigger_handler_adds", "Changes added to the queue", self.adds.clone());
        registry.register(
            "ktrigger_handler_retries",
            "Failed keys scheduled again after a backoff",
            self.retries.clone(),
        );
        registry.register(
            "ktrigger_handler_dropped",
            "Changes dropped because the queue was full or their retries were exhausted",
            self.dropped.clone(),
        );
        registry.register(
            "ktrigger_handler_processing_seconds",
            "Time spent in one handler callback",
            self.processing.clone(),
        );
    }

    /// The series of the loop `name`.
    pub(crate) fn for_loop(&self, name: &str) -> LoopMetrics {
        let labels: Labels = [("loop", name.to_string())];
        LoopMetrics {
            depth: self.depth.get_or_create(&labels).clone(),
            adds: self.adds.get_or_create(&labels).clone(),
            retries: self.retries.get_or_create(&labels).clone(),
            dropped: self.dropped.get_or_create(&labels).clone(),
            processing: self.processing.get_or_create(&labels).clone(),
        }
    }
}

/// One loop's series.
#[derive(Clone, Debug)]
pub(crate) struct LoopMetrics {
    pub(crate) depth: Gauge,
    pub(crate) adds: Counter,
    pub(crate) retries: Counter,
    pub(crate) dropped: Counter,
    pub(crate) processing: Histogram,
}
