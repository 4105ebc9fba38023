//! `/metrics`: per-trigger counters, queue depth and watch counts in the Prometheus text format,
//! read from the engine at scrape time (nothing is counted twice or kept in a second place).

use std::fmt;
use std::sync::Arc;

use ktrigger_core::{DestinationCounts, EngineObserver, StateStore, StatsSnapshot};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The Kubernetes watches of the sources (the WatchHub's) at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchStats {
    /// Watches open now.
    pub open: usize,
    /// Watches opened since start.
    pub opened: u64,
    /// Times a watch was re-established since start: resumed, re-listed or retried.
    pub restarts: u64,
}

/// Reads the [`WatchStats`] on every scrape.
pub type WatchCounts = Arc<dyn Fn() -> WatchStats + Send + Sync>;

/// A per-trigger counter: metric name, help, and how to read it from the trigger's counters.
type Counter = (&'static str, &'static str, fn(&StatsSnapshot) -> u64);

/// The counters of one trigger, exported as `<name>_total`.
const COUNTERS: [Counter; 9] = [
    ("ktrigger_trigger_received", "Events the trigger's source produced", |s| s.received),
    ("ktrigger_trigger_filtered", "Events dropped by filter, dedup, rate limit or debounce", |s| s.filtered),
    ("ktrigger_trigger_filter_errors", "Events whose filter could not be evaluated (not matched)", |s| s.filter_errors),
    ("ktrigger_trigger_fired", "Events passed on to the destinations", |s| s.fired),
    ("ktrigger_trigger_delivered", "Deliveries a destination accepted", |s| s.delivered),
    ("ktrigger_trigger_failed_attempts", "Failed delivery attempts", |s| s.failed),
    ("ktrigger_trigger_dead_lettered", "Deliveries given up on", |s| s.dead_lettered),
    (
        "ktrigger_trigger_queue_byte_limited",
        "Deliveries dead-lettered because the trigger's or the total queue byte limit was reached",
        |s| s.queue_byte_limited,
    ),
    (
        "ktrigger_trigger_backpressured",
        "Events held back because a destination queue was full (the source waited or the sender was told to retry)",
        |s| s.backpressured,
    ),
];

/// Reads the state store's size, pending deliveries and commit latency on every scrape.
pub struct StoreCollector(pub Arc<dyn StateStore>);

impl fmt::Debug for StoreCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("StoreCollector").field(&self.0.describe()).finish()
    }
}

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let metrics = self.0.metrics();
        let gauges = [
            ("ktrigger_state_bytes", "Bytes the state store takes", metrics.bytes),
            (
                "ktrigger_state_pending_deliveries",
                "Deliveries stored and not yet delivered or dead-lettered",
                metrics.pending_deliveries,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            let family = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(family)?;
        }
        let commits = ConstCounter::new(metrics.commits);
        let family =
            encoder.encode_descriptor("ktrigger_state_commits", "State store commits", None, commits.metric_type())?;
        commits.encode(family)?;
        let seconds = ConstCounter::new(metrics.commit_seconds);
        let family = encoder.encode_descriptor(
            "ktrigger_state_commit_seconds",
            "Time spent committing state store writes; divided by the commits, the mean write latency",
            None,
            seconds.metric_type(),
        )?;
        seconds.encode(family)?;
        Ok(())
    }
}

/// Reads the engine (and the watch counts) on every scrape.
pub struct EngineCollector {
    observer: EngineObserver,
    watches: Option<WatchCounts>,
}

impl fmt::Debug for EngineCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineCollector").finish_non_exhaustive()
    }
}

impl EngineCollector {
    /// A registry holding this collector, ready to be encoded with `prometheus_client::encoding::text`.
    pub fn registry(observer: EngineObserver, watches: Option<WatchCounts>) -> Registry {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(EngineCollector { observer, watches }));
        registry
    }
}

impl Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let triggers = self.observer.snapshot();
        let labels: Vec<[(&str, &str); 3]> = triggers
            .iter()
            .map(|t| {
                [
                    ("namespace", t.id.namespace.as_str()),
                    ("service", t.id.service.as_str()),
                    ("trigger", t.id.trigger.as_str()),
                ]
            })
            .collect();
        for (name, help, value) in COUNTERS {
            let counter = ConstCounter::new(0u64);
            let mut family = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            for (trigger, labels) in triggers.iter().zip(&labels) {
                ConstCounter::new(value(&trigger.stats)).encode(family.encode_family(labels)?)?;
            }
        }
        type DestinationCounter = (&'static str, &'static str, fn(&DestinationCounts) -> u64);
        let per_destination: [DestinationCounter; 3] = [
            ("ktrigger_destination_delivered", "Deliveries the destination accepted", |c| c.delivered),
            ("ktrigger_destination_failed_attempts", "Failed delivery attempts to the destination", |c| c.failed),
            ("ktrigger_destination_dead_lettered", "Deliveries to the destination given up on", |c| c.dead_lettered),
        ];
        for (name, help, value) in per_destination {
            let counter = ConstCounter::new(0u64);
            let mut family = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            for (trigger, labels) in triggers.iter().zip(&labels) {
                for (destination, counts) in &trigger.stats.destinations {
                    let labels = [labels[0], labels[1], labels[2], ("destination", destination.as_str())];
                    ConstCounter::new(value(counts)).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let restarts = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "ktrigger_trigger_source_restarts",
            "Restarts of the trigger's source after a failure",
            None,
            restarts.metric_type(),
        )?;
        for (trigger, labels) in triggers.iter().zip(&labels) {
            ConstCounter::new(trigger.stats.restarts).encode(family.encode_family(labels)?)?;
        }
        let depth = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "ktrigger_delivery_queue_depth",
            "Deliveries waiting for the trigger's destinations",
            None,
            depth.metric_type(),
        )?;
        for (trigger, labels) in triggers.iter().zip(&labels) {
            ConstGauge::new(i64::try_from(trigger.queued).unwrap_or(i64::MAX)).encode(family.encode_family(labels)?)?;
        }
        let bytes = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "ktrigger_delivery_queue_bytes",
            "Estimated bytes held by the trigger's queued and in-flight deliveries",
            None,
            bytes.metric_type(),
        )?;
        for (trigger, labels) in triggers.iter().zip(&labels) {
            let held = i64::try_from(trigger.queued_bytes).unwrap_or(i64::MAX);
            ConstGauge::new(held).encode(family.encode_family(labels)?)?;
        }
        let keys = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "ktrigger_dedup_keys",
            "Dedup keys the trigger holds",
            None,
            keys.metric_type(),
        )?;
        for (trigger, labels) in triggers.iter().zip(&labels) {
            let held = i64::try_from(trigger.dedup.keys).unwrap_or(i64::MAX);
            ConstGauge::new(held).encode(family.encode_family(labels)?)?;
        }
        let evicted = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "ktrigger_trigger_dedup_evicted",
            "Dedup keys forgotten early to stay within the per-trigger or total key limit",
            None,
            evicted.metric_type(),
        )?;
        for (trigger, labels) in triggers.iter().zip(&labels) {
            ConstCounter::new(trigger.dedup.evicted).encode(family.encode_family(labels)?)?;
        }
        let histogram = Histogram::new(std::iter::empty());
        let mut family = encoder.encode_descriptor(
            "ktrigger_delivery_latency_seconds",
            "Time from a trigger firing to a destination accepting the delivery, retries included",
            None,
            histogram.metric_type(),
        )?;
        for (trigger, labels) in triggers.iter().zip(&labels) {
            let latency = &trigger.latency;
            family.encode_family(labels)?.encode_histogram::<NoLabelSet>(
                latency.sum_seconds,
                latency.count,
                &latency.buckets,
                None,
            )?;
        }
        let running = ConstGauge::new(i64::try_from(triggers.len()).unwrap_or(i64::MAX));
        running.encode(encoder.encode_descriptor(
            "ktrigger_triggers_running",
            "Triggers running",
            None,
            running.metric_type(),
        )?)?;
        if let Some(watches) = &self.watches {
            let WatchStats { open, opened, restarts } = watches();
            let open = ConstGauge::new(i64::try_from(open).unwrap_or(i64::MAX));
            open.encode(encoder.encode_descriptor(
                "ktrigger_watches_open",
                "Kubernetes watches open now",
                None,
                open.metric_type(),
            )?)?;
            let opened = ConstCounter::new(opened);
            opened.encode(encoder.encode_descriptor(
                "ktrigger_watch_requests",
                "Kubernetes watch requests opened since start",
                None,
                opened.metric_type(),
            )?)?;
            let restarts = ConstCounter::new(restarts);
            restarts.encode(encoder.encode_descriptor(
                "ktrigger_watch_restarts",
                "Kubernetes watches re-established since start: resumed after their stream ended, \
                 re-listed after 410 Gone, or retried after a failed request",
                None,
                restarts.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// How many TriggerServices and triggers the controller sees in each state, as of its last
/// status computation; exported as gauges.
#[derive(Debug, Default)]
pub struct ServiceGauges(std::sync::Mutex<ServiceCounts>);

/// The counts behind [`ServiceGauges`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceCounts {
    /// TriggerServices whose Ready condition is True.
    pub services_ready: usize,
    /// TriggerServices whose Ready condition is not True.
    pub services_not_ready: usize,
    /// Triggers running.
    pub triggers_ready: usize,
    /// Triggers refused as invalid (Ready False with reason InvalidTriggers).
    pub triggers_invalid: usize,
    /// Valid triggers not running (starting, or their source failing).
    pub triggers_not_running: usize,
}

impl ServiceGauges {
    /// Replaces the counts.
    pub fn set(&self, counts: ServiceCounts) {
        *ktrigger_core::sync::lock(&self.0) = counts;
    }

    /// The counts now.
    pub fn get(&self) -> ServiceCounts {
        *ktrigger_core::sync::lock(&self.0)
    }
}

/// Exports [`ServiceGauges`] as `ktrigger_trigger_services{state}` and `ktrigger_triggers{state}`.
#[derive(Debug)]
pub struct ServiceCollector(pub Arc<ServiceGauges>);

impl Collector for ServiceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let counts = self.0.get();
        let gauge = |n: usize| ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
        let mut family = encoder.encode_descriptor(
            "ktrigger_trigger_services",
            "TriggerServices by their Ready condition",
            None,
            gauge(0).metric_type(),
        )?;
        gauge(counts.services_ready).encode(family.encode_family(&[("state", "ready")])?)?;
        gauge(counts.services_not_ready).encode(family.encode_family(&[("state", "not_ready")])?)?;
        let mut family = encoder.encode_descriptor(
            "ktrigger_triggers",
            "Triggers of the TriggerServices by state",
            None,
            gauge(0).metric_type(),
        )?;
        gauge(counts.triggers_ready).encode(family.encode_family(&[("state", "ready")])?)?;
        gauge(counts.triggers_invalid).encode(family.encode_family(&[("state", "invalid")])?)?;
        gauge(counts.triggers_not_running).encode(family.encode_family(&[("state", "not_running")])?)?;
        Ok(())
    }
}

/// Registers `ktrigger_build_info{version, commit} 1`.
pub fn register_build_info(registry: &mut Registry, version: &str, commit: &str) {
    let info = prometheus_client::metrics::info::Info::new(vec![
        ("version".to_string(), version.to_string()),
        ("commit".to_string(), commit.to_string()),
    ]);
    registry.register("ktrigger_build", "The version and commit ktrigger was built from", info);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_engine_exports_zero_triggers_and_the_watch_counts() {
        let stats = WatchStats { open: 1, opened: 3, restarts: 2 };
        let registry = EngineCollector::registry(EngineObserver::default(), Some(Arc::new(move || stats)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("ktrigger_triggers_running 0"), "{text}");
        assert!(text.contains("ktrigger_watches_open 1"), "{text}");
        assert!(text.contains("ktrigger_watch_requests_total 3"), "{text}");
        assert!(text.contains("# TYPE ktrigger_watch_restarts counter"), "{text}");
        assert!(text.contains("ktrigger_watch_restarts_total 2"), "{text}");
        assert!(text.contains("# TYPE ktrigger_trigger_fired counter"), "{text}");
        assert!(text.contains("# TYPE ktrigger_trigger_queue_byte_limited counter"), "{text}");
        assert!(text.contains("# TYPE ktrigger_trigger_backpressured counter"), "{text}");
        assert!(text.contains("# TYPE ktrigger_delivery_queue_bytes gauge"), "{text}");
        assert!(text.contains("# TYPE ktrigger_dedup_keys gauge"), "{text}");
        assert!(text.contains("# TYPE ktrigger_trigger_dedup_evicted counter"), "{text}");
    }

    #[test]
    fn service_gauges_and_build_info_are_exported() {
        let gauges = Arc::new(ServiceGauges::default());
        gauges.set(ServiceCounts {
            services_ready: 2,
            services_not_ready: 1,
            triggers_ready: 5,
            triggers_invalid: 1,
            triggers_not_running: 0,
        });
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ServiceCollector(gauges)));
        register_build_info(&mut registry, "0.1.0", "abc123");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("ktrigger_trigger_services{state=\"ready\"} 2"), "{text}");
        assert!(text.contains("ktrigger_trigger_services{state=\"not_ready\"} 1"), "{text}");
        assert!(text.contains("ktrigger_triggers{state=\"invalid\"} 1"), "{text}");
        assert!(text.contains("ktrigger_build_info{version=\"0.1.0\",commit=\"abc123\"} 1"), "{text}");
    }
}
