//! The router shared by all triggers: deduplication by key and window, and rate limits.
//!
//! Dedup follows khook's model: the first event with a key fires and the key becomes *firing*;
//! repeats within the window of the last fire are dropped but keep the key firing; a repeat
//! after the window fires again (a still-ongoing incident is re-notified once per window); a
//! key with no repeat for a whole window is *resolved*, and forgotten one more window later.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use ktrigger_api::ActiveEvent;
use tokio::time::Instant;

use crate::event::{TriggerId, rfc3339};
use crate::stats::lock;

/// Most dedup entries reported per trigger in status.
pub const MAX_ACTIVE_EVENTS: usize = 20;

/// What the router decided for one event of one trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Deliver it.
    Fire,
    /// A repeat of a firing key within its window.
    Duplicate {
        /// The dedup key.
        key: String,
    },
    /// The trigger's rate limit is exhausted.
    RateLimited,
}

/// A trigger's rate limit.
#[derive(Debug)]
pub struct RateLimit(DefaultDirectRateLimiter);

impl RateLimit {
    /// At most `per_minute` events a minute, `burst` (default `per_minute`) at once.
    pub fn per_minute(per_minute: u32, burst: Option<u32>) -> Option<Self> {
        let rate = NonZeroU32::new(per_minute)?;
        let burst = NonZeroU32::new(burst.unwrap_or(per_minute))?;
        Some(RateLimit(RateLimiter::direct(Quota::per_minute(rate).allow_burst(burst))))
    }
}

#[derive(Debug, Clone)]
struct DedupEntry {
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    last_seen_at: Instant,
    last_fired_at: Instant,
    window: Duration,
}

impl DedupEntry {
    fn is_firing(&self, now: Instant) -> bool {
        now.duration_since(self.last_seen_at) <= self.window
    }
}

#[derive(Debug, Default)]
struct TriggerDedup {
    entries: HashMap<String, DedupEntry>,
    pruned_at: Option<Instant>,
}

impl TriggerDedup {
    /// Forgets entries quiet for two windows; at most once a second, off the per-event path.
    fn prune(&mut self, now: Instant) {
        if self.pruned_at.is_some_and(|at| now.duration_since(at) < Duration::from_secs(1)) {
            return;
        }
        self.pruned_at = Some(now);
        self.entries.retain(|_, entry| now.duration_since(entry.last_seen_at) <= entry.window * 2);
    }
}

/// Dedup state of every trigger. One per engine, shared by all triggers.
#[derive(Debug, Default)]
pub struct Router {
    dedup: Mutex<HashMap<TriggerId, TriggerDedup>>,
}

impl Router {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decides whether an event of `trigger` fires. `dedup` is the event's key and the window;
    /// the rate limit is only consumed by events that would otherwise fire.
    pub fn admit(
        &self,
        trigger: &TriggerId,
        dedup: Option<(String, Duration)>,
        limit: Option<&RateLimit>,
    ) -> Admission {
        let Some((key, window)) = dedup else {
            return Self::limit(limit);
        };
        let now = Instant::now();
        let wall = Utc::now();
        let mut state = lock(&self.dedup);
        if !state.contains_key(trigger) {
            state.insert(trigger.clone(), TriggerDedup::default());
        }
        let Some(dedup_state) = state.get_mut(trigger) else { return Self::limit(limit) };
        dedup_state.prune(now);
        let entries = &mut dedup_state.entries;
        if let Some(entry) = entries.get_mut(&key)
            && now.duration_since(entry.last_fired_at) < window
        {
            if !entry.is_firing(now) {
                entry.first_seen = wall;
            }
            entry.last_seen = wall;
            entry.last_seen_at = now;
            entry.window = window;
            return Admission::Duplicate { key };
        }
        let admission = Self::limit(limit);
        if admission == Admission::Fire {
            let first_seen = match entries.get(&key) {
                Some(entry) if entry.is_firing(now) => entry.first_seen,
                _ => wall,
            };
            entries
                .insert(key, DedupEntry { first_seen, last_seen: wall, last_seen_at: now, last_fired_at: now, window });
        }
        admission
    }

    fn limit(limit: Option<&RateLimit>) -> Admission {
        match limit {
            Some(RateLimit(limiter)) if limiter.check().is_err() => Admission::RateLimited,
            _ => Admission::Fire,
        }
    }

    /// The dedup entries of `trigger`, newest first, at most [`MAX_ACTIVE_EVENTS`].
    pub fn active_events(&self, trigger: &TriggerId) -> Vec<ActiveEvent> {
        let now = Instant::now();
        let state = lock(&self.dedup);
        let Some(dedup_state) = state.get(trigger) else { return Vec::new() };
        let mut list: Vec<(&String, &DedupEntry)> = dedup_state.entries.iter().collect();
        list.sort_by(|a, b| b.1.last_seen_at.cmp(&a.1.last_seen_at).then_with(|| a.0.cmp(b.0)));
        list.into_iter()
            .take(MAX_ACTIVE_EVENTS)
            .map(|(key, entry)| ActiveEvent {
                key: key.clone(),
                state: if entry.is_firing(now) { "firing" } else { "resolved" }.to_string(),
                first_seen: rfc3339(entry.first_seen),
                last_seen: rfc3339(entry.last_seen),
            })
            .collect()
    }

    /// Drops the state of a trigger that was removed.
    pub fn forget(&self, trigger: &TriggerId) {
        lock(&self.dedup).remove(trigger);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> TriggerId {
        TriggerId { namespace: "ns".into(), service: "svc".into(), trigger: "t".into() }
    }

    fn dedup(key: &str) -> Option<(String, Duration)> {
        Some((key.to_string(), Duration::from_secs(600)))
    }

    fn states(router: &Router) -> Vec<(String, String)> {
        router.active_events(&id()).into_iter().map(|e| (e.key, e.state)).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn repeats_within_the_window_fire_once_and_stay_firing() {
        let router = Router::new();
        assert_eq!(router.admit(&id(), dedup("pod-a"), None), Admission::Fire);
        tokio::time::advance(Duration::from_secs(300)).await;
        assert_eq!(router.admit(&id(), dedup("pod-a"), None), Admission::Duplicate { key: "pod-a".into() });
        assert_eq!(router.admit(&id(), dedup("pod-b"), None), Admission::Fire);
        assert_eq!(states(&router), [("pod-a".into(), "firing".into()), ("pod-b".into(), "firing".into())]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_resolves_after_a_quiet_window_and_fires_again() {
        let router = Router::new();
        assert_eq!(router.admit(&id(), dedup("pod-a"), None), Admission::Fire);
        tokio::time::advance(Duration::from_secs(601)).await;
        assert_eq!(states(&router), [("pod-a".into(), "resolved".into())]);
        assert_eq!(router.admit(&id(), dedup("pod-a"), None), Admission::Fire);
        assert_eq!(states(&router), [("pod-a".into(), "firing".into())]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ongoing_incident_is_renotified_once_per_window() {
        let router = Router::new();
        let mut fired = 0;
        // A repeat every minute for 25 minutes with a 10-minute window: fires at 0, 10 and 20.
        for _ in 0..=25 {
            if router.admit(&id(), dedup("pod-a"), None) == Admission::Fire {
                fired += 1;
            }
            tokio::time::advance(Duration::from_secs(60)).await;
        }
        assert_eq!(fired, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn resolved_keys_are_forgotten_after_two_windows() {
        let router = Router::new();
        router.admit(&id(), dedup("pod-a"), None);
        tokio::time::advance(Duration::from_secs(1201)).await;
        router.admit(&id(), dedup("pod-b"), None);
        assert_eq!(states(&router), [("pod-b".into(), "firing".into())]);
        router.forget(&id());
        assert!(router.active_events(&id()).is_empty());
    }

    #[test]
    fn rate_limit_allows_the_burst_then_refuses() {
        let router = Router::new();
        let limit = RateLimit::per_minute(3, None).unwrap();
        let decisions: Vec<_> = (0..5).map(|_| router.admit(&id(), None, Some(&limit))).collect();
        assert_eq!(decisions.iter().filter(|d| **d == Admission::Fire).count(), 3);
        assert_eq!(decisions[3], Admission::RateLimited);
    }

    #[test]
    fn duplicates_do_not_consume_the_rate_limit() {
        let router = Router::new();
        let limit = RateLimit::per_minute(1, None).unwrap();
        assert_eq!(router.admit(&id(), dedup("a"), Some(&limit)), Admission::Fire);
        assert_eq!(router.admit(&id(), dedup("a"), Some(&limit)), Admission::Duplicate { key: "a".into() });
        assert_eq!(router.admit(&id(), dedup("b"), Some(&limit)), Admission::RateLimited);
    }
}
