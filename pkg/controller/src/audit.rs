//! khook's audit trail: Kubernetes Events with khook's reasons, derived from what the engine
//! reports of each trigger between two status ticks. Pure: no I/O.
//!
//! - `EventFiring`: a dedup key became firing; `EventResolved`: a firing key resolved (or was
//!   forgotten); `DuplicateEventIgnored`: a firing key was seen again within its window.
//! - `AgentCallSuccess` / `AgentCallFailure`: deliveries that succeeded / attempts that failed, for
//!   every destination type (khook only had the kagent one).
//! - `EventProcessingError`: events whose filter could not be evaluated.
//!
//! Like the other Events of the controller, at most one Event per reason and trigger is sent per
//! interval; what happens in between is counted and said in the next one.

use std::collections::BTreeMap;
use std::time::Duration;

use ktrigger_api::TriggerStatus;
use tokio::time::Instant;

/// A dedup key became firing.
pub const EVENT_FIRING: &str = "EventFiring";
/// A firing dedup key resolved.
pub const EVENT_RESOLVED: &str = "EventResolved";
/// A delivery succeeded.
pub const AGENT_CALL_SUCCESS: &str = "AgentCallSuccess";
/// A delivery attempt failed.
pub const AGENT_CALL_FAILURE: &str = "AgentCallFailure";
/// A repeat of a firing key was dropped.
pub const DUPLICATE_EVENT_IGNORED: &str = "DuplicateEventIgnored";
/// An event could not be processed.
pub const EVENT_PROCESSING_ERROR: &str = "EventProcessingError";

/// One audit Event to publish about a TriggerService (or the object it was converted from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// khook's reason.
    pub reason: &'static str,
    /// Warning (failures) or Normal.
    pub warning: bool,
    /// What the controller did, for the Event's `action`.
    pub action: &'static str,
    /// What happened, naming the trigger.
    pub note: String,
}

/// What has been seen and reported of one TriggerService's triggers.
#[derive(Debug, Default)]
pub struct AuditTrail {
    triggers: BTreeMap<String, TriggerTrail>,
}

#[derive(Debug, Default)]
struct TriggerTrail {
    /// The dedup entries of the last observation: key → (firing, firstSeen, lastSeen).
    keys: BTreeMap<String, (bool, String, String)>,
    fired: u64,
    delivered: u64,
    failed: u64,
    filter_errors: u64,
    /// Per reason, what happened since the last Event of that reason.
    pending: BTreeMap<&'static str, (u64, String)>,
    sent: BTreeMap<&'static str, Instant>,
}

impl AuditTrail {
    /// Compares `triggers` with the previous observation and returns the Events due now: at most
    /// one per reason and trigger every `interval`.
    pub fn observe(&mut self, triggers: &[TriggerStatus], now: Instant, interval: Duration) -> Vec<AuditEvent> {
        self.triggers.retain(|name, _| triggers.iter().any(|t| &t.name == name));
        let mut events = Vec::new();
        for status in triggers {
            let trail = self.triggers.entry(status.name.clone()).or_default();
            trail.record(status);
            for (reason, (count, detail)) in std::mem::take(&mut trail.pending) {
                if trail.sent.get(reason).is_some_and(|at| now.duration_since(*at) < interval) {
                    trail.pending.insert(reason, (count, detail));
                    continue;
                }
                trail.sent.insert(reason, now);
                let mut note = format!("trigger {}: {detail}", status.name);
                if count > 1 {
                    note.push_str(&format!(" ({count} in all since the last {reason} Event)"));
                }
                let (warning, action) = match reason {
                    AGENT_CALL_FAILURE | EVENT_PROCESSING_ERROR => (true, "Deliver"),
                    AGENT_CALL_SUCCESS => (false, "Deliver"),
                    _ => (false, "Deduplicate"),
                };
                let action = if reason == EVENT_PROCESSING_ERROR { "Filter" } else { action };
                events.push(AuditEvent { reason, warning, action, note });
            }
        }
        events
    }
}

impl TriggerTrail {
    /// Adds what changed since the last observation to `pending`.
    fn record(&mut self, status: &TriggerStatus) {
        let mut firing_now = 0u64;
        let mut repeated = Vec::new();
        let mut current = BTreeMap::new();
        for active in &status.active_events {
            let firing = active.state == "firing";
            let previous = self.keys.get(&active.key);
            let was_firing = previous.is_some_and(|p| p.0);
            let same_incident = was_firing && firing && previous.is_some_and(|p| p.1 == active.first_seen);
            if same_incident {
                if previous.is_some_and(|p| p.2 != active.last_seen) {
                    repeated.push(active);
                }
            } else if was_firing && !firing {
                self.add(EVENT_RESOLVED, format!("event {} resolved (last seen {})", active.key, active.last_seen));
            } else if firing {
                firing_now += 1;
                self.add(EVENT_FIRING, format!("event {} firing (first seen {})", active.key, active.first_seen));
            }
            current.insert(active.key.clone(), (firing, active.first_seen.clone(), active.last_seen.clone()));
        }
        for (key, (firing, _, last)) in &self.keys {
            if *firing && !current.contains_key(key) {
                let detail = format!("event {key} resolved (last seen {last})");
                self.pending.entry(EVENT_RESOLVED).and_modify(|p| p.0 += 1).or_insert((1, detail));
            }
        }
        // A firing key seen again fired anew when its window had passed: those are the fires
        // not explained by new keys; the other repeats were dropped.
        let refired = status.fired.saturating_sub(self.fired).saturating_sub(firing_now);
        for active in repeated.iter().skip(usize::try_from(refired).unwrap_or(usize::MAX)) {
            let detail = format!("duplicate of firing event {} ignored (seen {})", active.key, active.last_seen);
            self.add(DUPLICATE_EVENT_IGNORED, detail);
        }
        self.keys = current;
        self.fired = status.fired;
        let last_error = status.last_error.as_deref().unwrap_or("unknown");
        if status.delivered > self.delivered {
            let answer = status.last_delivery.as_deref().unwrap_or("accepted");
            let count = status.delivered - self.delivered;
            self.add_many(AGENT_CALL_SUCCESS, count, format!("delivered; last answer: {answer}"));
        }
        if status.failed > self.failed {
            let count = status.failed - self.failed;
            self.add_many(AGENT_CALL_FAILURE, count, format!("delivery attempt failed: {last_error}"));
        }
        if status.filter_errors > self.filter_errors {
            let count = status.filter_errors - self.filter_errors;
            self.add_many(EVENT_PROCESSING_ERROR, count, format!("the filter could not be evaluated: {last_error}"));
        }
        self.delivered = status.delivered;
        self.failed = status.failed;
        self.filter_errors = status.filter_errors;
    }

    fn add(&mut self, reason: &'static str, detail: String) {
        self.add_many(reason, 1, detail);
    }

    /// Counts `count` more of `reason`; the latest detail is the one told.
    fn add_many(&mut self, reason: &'static str, count: u64, detail: String) {
        let pending = self.pending.entry(reason).or_insert((0, String::new()));
        pending.0 = pending.0.saturating_add(count);
        pending.1 = detail;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktrigger_api::ActiveEvent;

    const INTERVAL: Duration = Duration::from_secs(60);
    const KEY: &str = "pod-restart:apps:web-0";

    fn active(state: &str, first: &str, last: &str) -> ActiveEvent {
        ActiveEvent { key: KEY.into(), state: state.into(), first_seen: first.into(), last_seen: last.into() }
    }

    fn status(fired: u64, delivered: u64, active_events: Vec<ActiveEvent>) -> TriggerStatus {
        TriggerStatus { name: "restarts".into(), fired, delivered, active_events, ..Default::default() }
    }

    fn reasons(events: &[AuditEvent]) -> Vec<&'static str> {
        events.iter().map(|e| e.reason).collect()
    }

    #[test]
    fn a_first_event_fires_and_its_delivery_succeeds() {
        let mut trail = AuditTrail::default();
        let now = Instant::now();
        let events = trail.observe(&[status(1, 1, vec![active("firing", "t1", "t1")])], now, INTERVAL);
        assert_eq!(reasons(&events), [AGENT_CALL_SUCCESS, EVENT_FIRING]);
        assert_eq!(events[1].note, "trigger restarts: event pod-restart:apps:web-0 firing (first seen t1)");
        assert!(!events[1].warning);
    }

    #[test]
    fn a_repeat_within_the_window_is_a_duplicate_and_the_end_of_the_window_resolves() {
        let mut trail = AuditTrail::default();
        let now = Instant::now();
        trail.observe(&[status(1, 1, vec![active("firing", "t1", "t1")])], now, INTERVAL);
        let repeat = trail.observe(&[status(1, 1, vec![active("firing", "t1", "t2")])], now, INTERVAL);
        assert_eq!(reasons(&repeat), [DUPLICATE_EVENT_IGNORED]);
        assert_eq!(
            repeat[0].note,
            "trigger restarts: duplicate of firing event pod-restart:apps:web-0 ignored (seen t2)"
        );
        let resolved = trail.observe(&[status(1, 1, vec![active("resolved", "t1", "t2")])], now, INTERVAL);
        assert_eq!(reasons(&resolved), [EVENT_RESOLVED]);
    }

    #[test]
    fn a_repeat_after_the_window_fires_again_and_is_no_duplicate() {
        let mut trail = AuditTrail::default();
        let now = Instant::now();
        trail.observe(&[status(1, 1, vec![active("firing", "t1", "t1")])], now, INTERVAL);
        let refire = trail.observe(&[status(2, 1, vec![active("firing", "t1", "t9")])], now, INTERVAL);
        assert!(reasons(&refire).is_empty(), "{refire:?}");
    }

    #[test]
    fn events_of_one_reason_are_rate_limited_and_counted() {
        let mut trail = AuditTrail::default();
        let start = Instant::now();
        let failed = |failed| TriggerStatus {
            name: "restarts".into(),
            failed,
            last_error: Some("HTTP 503".into()),
            ..Default::default()
        };
        let first = trail.observe(&[failed(1)], start, INTERVAL);
        assert_eq!(first[0].note, "trigger restarts: delivery attempt failed: HTTP 503");
        assert!(first[0].warning);
        assert!(trail.observe(&[failed(3)], start + Duration::from_secs(10), INTERVAL).is_empty());
        let later = trail.observe(&[failed(4)], start + INTERVAL, INTERVAL);
        assert_eq!(
            later[0].note,
            "trigger restarts: delivery attempt failed: HTTP 503 (3 in all since the last AgentCallFailure Event)"
        );
    }
}
