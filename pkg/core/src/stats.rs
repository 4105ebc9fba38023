//! Per-trigger counters, read by the status writer and printed by the CLI.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use ktrigger_api::TriggerStatus;

use crate::event::rfc3339;
use crate::sync::lock;

/// Upper bounds (seconds) of the delivery latency buckets; a last, unbounded bucket follows.
pub const LATENCY_BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0];

/// Time from an event firing to its delivery being accepted, as a histogram.
#[derive(Debug, Default)]
struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

/// A histogram of delivery latencies at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencySnapshot {
    /// `(upper bound in seconds, deliveries in that bucket)`, the last bound being infinity.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of all latencies, in seconds.
    pub sum_seconds: f64,
    /// Deliveries measured.
    pub count: u64,
}

/// What one trigger has done since it started. Cheap to update from any task.
#[derive(Debug, Default)]
pub struct TriggerStats {
    latency: LatencyHistogram,
    ready: AtomicBool,
    received: AtomicU64,
    filtered: AtomicU64,
    filter_errors: AtomicU64,
    fired: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    dead_lettered: AtomicU64,
    queue_byte_limited: AtomicU64,
    backpressured: AtomicU64,
    restarts: AtomicU64,
    restored: AtomicU64,
    last_fired: Mutex<Option<DateTime<Utc>>>,
    last_error: Mutex<Option<String>>,
    last_delivery: Mutex<Option<String>>,
    destinations: Mutex<BTreeMap<String, DestinationCounts>>,
}

/// What happened to the deliveries of one destination (e.g. `webhook#0`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DestinationCounts {
    /// Deliveries it accepted.
    pub delivered: u64,
    /// Failed attempts.
    pub failed: u64,
    /// Deliveries given up on.
    pub dead_lettered: u64,
}

/// One thing that happened to a delivery of a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestinationOutcome {
    /// Accepted.
    Delivered,
    /// An attempt failed.
    Failed,
    /// Given up on.
    DeadLettered,
}

/// The counters of one trigger at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Whether the source is running.
    pub ready: bool,
    /// Events the source produced for this trigger.
    pub received: u64,
    /// Events dropped by the filter, dedup, rate limit or debounce.
    pub filtered: u64,
    /// Of `filtered`, events whose filter could not be evaluated (error or non-bool result).
    pub filter_errors: u64,
    /// Events passed on to the destinations.
    pub fired: u64,
    /// Deliveries a destination accepted.
    pub delivered: u64,
    /// Failed delivery attempts.
    pub failed: u64,
    /// Deliveries given up on.
    pub dead_lettered: u64,
    /// Of `dead_lettered`, deliveries refused because a queue byte limit was reached.
    pub queue_byte_limited: u64,
    /// Events held back because a destination queue was full: the source waited for room, or
    /// the sender was told to retry.
    pub backpressured: u64,
    /// Times the source was restarted after an error or panic.
    pub restarts: u64,
    /// Deliveries found stored when the trigger started.
    pub restored: u64,
    /// When the trigger last fired.
    pub last_fired: Option<DateTime<Utc>>,
    /// The last error met.
    pub last_error: Option<String>,
    /// What a destination answered to the latest accepted delivery that it said something about.
    pub last_delivery: Option<String>,
    /// Per destination label, what happened to its deliveries.
    pub destinations: BTreeMap<String, DestinationCounts>,
}

impl TriggerStats {
    /// Marks whether the source is running.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Counts an event produced by the source.
    pub fn record_received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts deliveries found in the state store when the trigger started.
    pub fn record_restored(&self, deliveries: usize) {
        self.restored.fetch_add(deliveries as u64, Ordering::Relaxed);
    }

    /// Counts an event that was dropped before firing.
    pub fn record_filtered(&self) {
        self.filtered.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an event dropped because its filter failed to evaluate, and remembers why.
    pub fn record_filter_error(&self, reason: &str) {
        self.filtered.fetch_add(1, Ordering::Relaxed);
        self.filter_errors.fetch_add(1, Ordering::Relaxed);
        self.record_error(reason);
    }

    /// Counts an event passed on to the destinations.
    pub fn record_fired(&self) {
        self.fired.fetch_add(1, Ordering::Relaxed);
        *lock(&self.last_fired) = Some(Utc::now());
    }

    /// Counts a delivery a destination accepted `latency` after its trigger fired; `answer`
    /// is what the destination said (e.g. `kagent#0: task 42 completed`), when it said something.
    pub fn record_delivered(&self, latency: std::time::Duration, answer: Option<String>) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        if answer.is_some() {
            *lock(&self.last_delivery) = answer;
        }
        let seconds = latency.as_secs_f64();
        let bucket = LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound).unwrap_or(LATENCY_BUCKETS.len());
        self.latency.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The delivery latency histogram now.
    pub fn latency(&self) -> LatencySnapshot {
        let counts: Vec<u64> = self.latency.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let bounds = LATENCY_BUCKETS.iter().copied().chain(std::iter::once(f64::INFINITY));
        LatencySnapshot {
            count: counts.iter().sum(),
            buckets: bounds.zip(counts).collect(),
            sum_seconds: self.latency.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }

    /// Counts a failed delivery attempt.
    pub fn record_failed_attempt(&self, reason: &str) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.record_error(reason);
    }

    /// Counts a delivery given up on.
    pub fn record_dead_lettered(&self) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts what happened to a delivery of the destination `label`. The labels are the
    /// trigger's own destinations, so the map is bounded by their number.
    pub fn record_destination(&self, label: &str, outcome: DestinationOutcome) {
        let mut destinations = lock(&self.destinations);
        let counts = destinations.entry(label.to_string()).or_default();
        let counter = match outcome {
            DestinationOutcome::Delivered => &mut counts.delivered,
            DestinationOutcome::Failed => &mut counts.failed,
            DestinationOutcome::DeadLettered => &mut counts.dead_lettered,
        };
        *counter = counter.saturating_add(1);
    }

    /// Counts a delivery refused because a queue byte limit was reached (also dead-lettered).
    pub fn record_queue_byte_limited(&self) {
        self.queue_byte_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an event held back because a destination queue was full.
    pub fn record_backpressured(&self) {
        self.backpressured.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a restart of the source after it failed.
    pub fn record_restart(&self, reason: &str) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
        self.record_error(reason);
    }

    /// Remembers the latest error.
    pub fn record_error(&self, reason: &str) {
        *lock(&self.last_error) = Some(reason.to_string());
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            ready: self.ready.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            filtered: self.filtered.load(Ordering::Relaxed),
            filter_errors: self.filter_errors.load(Ordering::Relaxed),
            fired: self.fired.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            queue_byte_limited: self.queue_byte_limited.load(Ordering::Relaxed),
            backpressured: self.backpressured.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
            restored: self.restored.load(Ordering::Relaxed),
            last_fired: *lock(&self.last_fired),
            last_error: lock(&self.last_error).clone(),
            last_delivery: lock(&self.last_delivery).clone(),
            destinations: lock(&self.destinations).clone(),
        }
    }
}

impl StatsSnapshot {
    /// The API status entry of trigger `name` (active events and dedup evictions are added by
    /// the caller).
    pub fn to_status(&self, name: &str) -> TriggerStatus {
        TriggerStatus {
            name: name.to_string(),
            ready: self.ready,
            received: self.received,
            matched: self.received,
            filtered: self.filtered,
            fired: self.fired,
            failed: self.failed,
            delivered: self.delivered,
            filter_errors: self.filter_errors,
            dead_lettered: self.dead_lettered,
            queue_byte_limited: self.queue_byte_limited,
            backpressured: self.backpressured,
            restarts: self.restarts,
            restored_deliveries: self.restored,
            last_fired: self.last_fired.map(rfc3339),
            last_error: self.last_error.clone(),
            last_delivery: self.last_delivery.clone(),
            active_events: Vec::new(),
            ..TriggerStatus::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn delivery_latencies_fall_into_their_buckets() {
        let stats = TriggerStats::default();
        for millis in [3, 40, 40, 90_000] {
            stats.record_delivered(Duration::from_millis(millis), None);
        }
        let latency = stats.latency();
        assert_eq!(latency.count, 4);
        assert_eq!(latency.buckets[0], (0.005, 1));
        assert_eq!(latency.buckets[3], (0.05, 2));
        assert_eq!(latency.buckets.last().copied(), Some((f64::INFINITY, 1)));
        assert!((latency.sum_seconds - 90.083).abs() < 1e-9, "{latency:?}");
        assert_eq!(stats.snapshot().delivered, 4);
    }
}
