//! Per-trigger counters, read by the status writer and printed by the CLI.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use ktrigger_api::TriggerStatus;

use crate::event::rfc3339;

/// What one trigger has done since it started. Cheap to update from any task.
#[derive(Debug, Default)]
pub struct TriggerStats {
    ready: AtomicBool,
    matched: AtomicU64,
    filtered: AtomicU64,
    filter_errors: AtomicU64,
    fired: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    dead_lettered: AtomicU64,
    restarts: AtomicU64,
    last_fired: Mutex<Option<DateTime<Utc>>>,
    last_error: Mutex<Option<String>>,
}

/// The counters of one trigger at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Whether the source is running.
    pub ready: bool,
    /// Events the source produced for this trigger.
    pub matched: u64,
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
    /// Times the source was restarted after an error or panic.
    pub restarts: u64,
    /// When the trigger last fired.
    pub last_fired: Option<DateTime<Utc>>,
    /// The last error met.
    pub last_error: Option<String>,
}

impl TriggerStats {
    /// Marks whether the source is running.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Counts an event produced by the source.
    pub fn record_matched(&self) {
        self.matched.fetch_add(1, Ordering::Relaxed);
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

    /// Counts a delivery a destination accepted.
    pub fn record_delivered(&self) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
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
            matched: self.matched.load(Ordering::Relaxed),
            filtered: self.filtered.load(Ordering::Relaxed),
            filter_errors: self.filter_errors.load(Ordering::Relaxed),
            fired: self.fired.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
            last_fired: *lock(&self.last_fired),
            last_error: lock(&self.last_error).clone(),
        }
    }
}

impl StatsSnapshot {
    /// The API status entry of trigger `name` (active events are added by the caller).
    pub fn to_status(&self, name: &str) -> TriggerStatus {
        TriggerStatus {
            name: name.to_string(),
            ready: self.ready,
            matched: self.matched,
            filtered: self.filtered,
            fired: self.fired,
            failed: self.failed,
            dead_lettered: self.dead_lettered,
            restarts: self.restarts,
            last_fired: self.last_fired.map(rfc3339),
            last_error: self.last_error.clone(),
            active_events: Vec::new(),
        }
    }
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
