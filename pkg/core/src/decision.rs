//! What each trigger decided about an event that someone waits on: the inbound webhook answers
//! with it, so a sender learns whether its event fired without reading logs.
//!
//! Events are told apart by their shared allocation, not their id: a sender chooses a CloudEvent's
//! id, and must never see the decisions about another sender's event.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;

use crate::event::{SharedEvent, TriggerId};

/// Events waited on at once, all callers together; past it an answer says nothing of decisions.
pub const MAX_WAITING: usize = 1024;

/// What a trigger did with an event. Only the kind: reasons may quote the event or filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// Passed on to the destinations.
    Fired,
    /// The filter returned false.
    FilteredOut,
    /// The filter or dedup key could not be evaluated.
    FilterError,
    /// A duplicate of a key still firing.
    Duplicate,
    /// Over the trigger's rate limit.
    RateLimited,
    /// Held for the debounce quiet period; fires then unless a newer event replaces it.
    Debouncing,
    /// Replaced by a newer event within the debounce quiet period.
    Debounced,
}

/// One trigger's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The trigger, `namespace/service/trigger`.
    pub trigger: String,
    /// What it did.
    pub outcome: Outcome,
}

#[derive(Default)]
struct Waiter {
    decisions: Mutex<Vec<Decision>>,
    changed: Notify,
}

#[derive(Default)]
struct Board {
    waiting: Mutex<HashMap<usize, Arc<Waiter>>>,
    count: AtomicUsize,
}

static BOARD: LazyLock<Board> = LazyLock::new(Board::default);

fn key(event: &SharedEvent) -> usize {
    Arc::as_ptr(event) as usize
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records `trigger`'s decision about `event`, if anyone waits for it. Costs one atomic read when
/// nobody waits.
pub fn decide(event: &SharedEvent, trigger: &TriggerId, outcome: Outcome) {
    if BOARD.count.load(Ordering::Relaxed) == 0 {
        return;
    }
    let Some(waiter) = lock(&BOARD.waiting).get(&key(event)).cloned() else { return };
    let mut decisions = lock(&waiter.decisions);
    // Bounded by the triggers the event was handed to; a trigger decides once per event.
    if decisions.len() < MAX_WAITING {
        decisions.push(Decision { trigger: trigger.to_string(), outcome });
    }
    drop(decisions);
    waiter.changed.notify_waiters();
}

/// Decisions about some events, collected until dropped.
pub struct Ticket {
    keys: Vec<usize>,
    waiter: Arc<Waiter>,
}

impl Ticket {
    /// Starts collecting the decisions about `events` (the forms of one request's event), before
    /// they are handed over. `None` when too many events are waited on already.
    pub fn watch(events: &[SharedEvent]) -> Option<Ticket> {
        let mut waiting = lock(&BOARD.waiting);
        if waiting.len().saturating_add(events.len()) > MAX_WAITING {
            return None;
        }
        let waiter = Arc::new(Waiter::default());
        let mut keys = Vec::new();
        for event in events {
            let key = key(event);
            if !keys.contains(&key) {
                waiting.insert(key, waiter.clone());
                keys.push(key);
            }
        }
        BOARD.count.fetch_add(keys.len(), Ordering::Relaxed);
        Some(Ticket { keys, waiter })
    }

    /// The decisions once `expected` triggers decided, or those made when `timeout` ran out.
    pub async fn wait(&self, expected: usize, timeout: Duration) -> Vec<Decision> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.waiter.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let decisions = lock(&self.waiter.decisions).clone();
            if decisions.len() >= expected {
                return decisions;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return lock(&self.waiter.decisions).clone();
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut waiting = lock(&BOARD.waiting);
        for key in &self.keys {
            waiting.remove(key);
        }
        BOARD.count.fetch_sub(self.keys.len(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    fn id(trigger: &str) -> TriggerId {
        TriggerId { namespace: "ns".into(), service: "svc".into(), trigger: trigger.into() }
    }

    #[tokio::test]
    async fn a_ticket_collects_the_decisions_about_its_own_event_only() {
        let mine: SharedEvent = Arc::new(Event::new("webhook", "receive", serde_json::json!({})));
        let other: SharedEvent = Arc::new(Event { ..(*mine).clone() });
        let ticket = Ticket::watch(std::slice::from_ref(&mine)).unwrap();
        decide(&other, &id("a"), Outcome::Fired);
        decide(&mine, &id("a"), Outcome::FilteredOut);
        decide(&mine, &id("b"), Outcome::Fired);
        let decisions = ticket.wait(2, Duration::from_secs(5)).await;
        let outcomes: Vec<_> = decisions.iter().map(|d| (d.trigger.as_str(), d.outcome)).collect();
        assert_eq!(outcomes, [("ns/svc/a", Outcome::FilteredOut), ("ns/svc/b", Outcome::Fired)]);
    }

    #[tokio::test]
    async fn waiting_ends_at_the_timeout_with_what_was_decided() {
        let event: SharedEvent = Arc::new(Event::new("webhook", "receive", serde_json::json!({})));
        let ticket = Ticket::watch(std::slice::from_ref(&event)).unwrap();
        decide(&event, &id("a"), Outcome::Debouncing);
        let decisions = ticket.wait(2, Duration::from_millis(50)).await;
        assert_eq!(decisions.len(), 1);
        drop(ticket);
        decide(&event, &id("b"), Outcome::Fired);
        assert!(lock(&BOARD.waiting).get(&key(&event)).is_none(), "a dropped ticket stops collecting");
    }
}
