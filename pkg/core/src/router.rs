//! The router shared by all triggers: deduplication by key and window, and rate limits.
//!
//! Dedup follows khook's model: the first event with a key fires and the key becomes *firing*;
//! repeats within the window of the last fire are dropped but keep the key firing; a repeat
//! after the window fires again (a still-ongoing incident is re-notified once per window); a
//! key with no repeat for a whole window is *resolved*, and forgotten one more window later.
//!
//! Keys are bounded in length and number: a key longer than [`MAX_DEDUP_KEY_BYTES`] is kept
//! as a short prefix and its SHA-256, so equal keys still match; a trigger keeps at most
//! [`DedupLimits::keys_per_trigger`] keys, and all triggers together [`DedupLimits::keys`].
//! When a limit is reached the least recently seen key goes, taken from the trigger holding the
//! most keys when the total is reached, so a trigger minting keys cannot push out another's.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use ktrigger_api::ActiveEvent;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::event::{TriggerId, rfc3339};
use crate::sync::lock;

/// Most dedup entries reported per trigger in status.
pub const MAX_ACTIVE_EVENTS: usize = 20;
/// Longest dedup key kept as it is; longer ones are kept as a prefix and their hash.
pub const MAX_DEDUP_KEY_BYTES: usize = 256;
/// Bytes of a long key kept in front of its hash, so status still says what it was about.
const HASHED_KEY_PREFIX_BYTES: usize = 64;
/// Default number of dedup keys one trigger keeps.
pub const DEFAULT_MAX_DEDUP_KEYS_PER_TRIGGER: usize = 10_000;
/// Default number of dedup keys all triggers keep together.
pub const DEFAULT_MAX_DEDUP_KEYS: usize = 50_000;

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

/// How many dedup keys the router keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupLimits {
    /// Most keys one trigger keeps.
    pub keys_per_trigger: usize,
    /// Most keys all triggers keep together.
    pub keys: usize,
}

impl Default for DedupLimits {
    fn default() -> Self {
        DedupLimits { keys_per_trigger: DEFAULT_MAX_DEDUP_KEYS_PER_TRIGGER, keys: DEFAULT_MAX_DEDUP_KEYS }
    }
}

/// The dedup state of one trigger as counted for status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DedupCounts {
    /// Keys kept now.
    pub keys: usize,
    /// Keys forgotten early to stay within the limits.
    pub evicted: u64,
}

/// A dedup entry as kept in the state store: wall-clock times, so that a restart can tell how
/// long ago the key fired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredDedup {
    /// When the current run of the key began.
    pub first_seen: DateTime<Utc>,
    /// When the key was last seen.
    pub last_seen: DateTime<Utc>,
    /// When the key last fired.
    pub last_fired: DateTime<Utc>,
    /// The dedup window, in milliseconds.
    pub window_ms: u64,
}

#[derive(Debug, Clone)]
struct DedupEntry {
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    last_fired: DateTime<Utc>,
    last_seen_at: Instant,
    last_fired_at: Instant,
    window: Duration,
    /// Position in [`TriggerDedup::by_age`].
    touched: u64,
}

impl DedupEntry {
    fn is_firing(&self, now: Instant) -> bool {
        now.duration_since(self.last_seen_at) <= self.window
    }
}

#[derive(Debug, Default)]
struct TriggerDedup {
    entries: HashMap<Arc<str>, DedupEntry>,
    /// Keys by when they were last seen, oldest first.
    by_age: BTreeMap<u64, Arc<str>>,
    pruned_at: Option<Instant>,
    evicted: u64,
    /// Keys forgotten since the last [`Router::take_removed`], when the router persists.
    removed: Option<Vec<Arc<str>>>,
}

impl TriggerDedup {
    /// Forgets entries quiet for two windows, at most once a second; the number forgotten.
    fn prune(&mut self, now: Instant) -> usize {
        if self.pruned_at.is_some_and(|at| now.duration_since(at) < Duration::from_secs(1)) {
            return 0;
        }
        self.pruned_at = Some(now);
        let before = self.entries.len();
        let by_age = &mut self.by_age;
        let removed = &mut self.removed;
        self.entries.retain(|key, entry| {
            let keep = now.duration_since(entry.last_seen_at) <= entry.window.saturating_mul(2);
            if !keep {
                by_age.remove(&entry.touched);
                if let Some(removed) = removed {
                    removed.push(key.clone());
                }
            }
            keep
        });
        before.saturating_sub(self.entries.len())
    }

    /// Forgets the least recently seen key; false when there is none.
    fn evict_oldest(&mut self) -> bool {
        let Some((_, key)) = self.by_age.pop_first() else { return false };
        self.entries.remove(&key);
        self.evicted = self.evicted.saturating_add(1);
        if let Some(removed) = &mut self.removed {
            removed.push(key);
        }
        true
    }

    /// Moves `key` to the newest end of [`Self::by_age`].
    fn touch(&mut self, key: &Arc<str>, clock: &mut u64) {
        if let Some(entry) = self.entries.get_mut(key) {
            self.by_age.remove(&entry.touched);
            entry.touched = next(clock);
            self.by_age.insert(entry.touched, key.clone());
        }
    }
}

fn next(clock: &mut u64) -> u64 {
    *clock = clock.wrapping_add(1);
    *clock
}

#[derive(Debug, Default)]
struct DedupState {
    triggers: HashMap<TriggerId, TriggerDedup>,
    /// Keys of all triggers.
    keys: usize,
    /// Orders touches across all triggers.
    clock: u64,
}

impl DedupState {
    /// Makes room for one more key of `trigger`: its own oldest goes when it is at its limit,
    /// and the oldest of the trigger holding the most keys when all are at the total.
    fn make_room(&mut self, trigger: &TriggerId, limits: DedupLimits) {
        let own = self.triggers.get(trigger).map_or(0, |t| t.entries.len());
        if own >= limits.keys_per_trigger.max(1)
            && let Some(state) = self.triggers.get_mut(trigger)
            && state.evict_oldest()
        {
            self.keys = self.keys.saturating_sub(1);
        }
        if self.keys >= limits.keys.max(1)
            && let Some(largest) = self.triggers.values_mut().max_by_key(|t| t.entries.len())
            && largest.evict_oldest()
        {
            self.keys = self.keys.saturating_sub(1);
        }
    }
}

/// Dedup state of every trigger. One per engine, shared by all triggers.
#[derive(Debug, Default)]
pub struct Router {
    dedup: Mutex<DedupState>,
    limits: DedupLimits,
    /// Keep track of forgotten keys, so that their stored copies can be removed.
    persist: bool,
}

/// The key kept for `key`: itself when short, else a prefix and its SHA-256.
pub fn bounded_key(key: String) -> String {
    if key.len() <= MAX_DEDUP_KEY_BYTES {
        return key;
    }
    let mut end = HASHED_KEY_PREFIX_BYTES;
    while !key.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    let digest = Sha256::digest(key.as_bytes());
    format!("{}…sha256:{}", &key[..end], hex::encode(digest))
}

impl Router {
    /// An empty router with the default key limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty router keeping at most the keys `limits` allow.
    pub fn with_limits(limits: DedupLimits) -> Self {
        Router { limits, ..Self::default() }
    }

    /// The same router, noting which keys it forgets (see [`Router::take_removed`]) so that a
    /// state store can forget them too.
    pub fn persisting(self) -> Self {
        Router { persist: true, ..self }
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
        let key: Arc<str> = Arc::from(bounded_key(key));
        let now = Instant::now();
        let wall = Utc::now();
        let mut guard = lock(&self.dedup);
        let state = &mut *guard;
        if !state.triggers.contains_key(trigger) {
            state.triggers.insert(trigger.clone(), self.new_trigger_state());
        }
        let pruned = state.triggers.get_mut(trigger).map_or(0, |t| t.prune(now));
        state.keys = state.keys.saturating_sub(pruned);
        let known = state.triggers.get(trigger).and_then(|t| t.entries.get(&key)).map(|entry| {
            let repeat = now.duration_since(entry.last_fired_at) < window;
            let first_seen = if entry.is_firing(now) { entry.first_seen } else { wall };
            (repeat, first_seen)
        });
        if let Some((true, first_seen)) = known {
            if let Some(trigger_state) = state.triggers.get_mut(trigger) {
                if let Some(entry) = trigger_state.entries.get_mut(&key) {
                    entry.first_seen = first_seen;
                    entry.last_seen = wall;
                    entry.last_seen_at = now;
                    entry.window = window;
                }
                trigger_state.touch(&key, &mut state.clock);
            }
            return Admission::Duplicate { key: key.to_string() };
        }
        let admission = Self::limit(limit);
        if admission != Admission::Fire {
            return admission;
        }
        if known.is_none() {
            state.make_room(trigger, self.limits);
            state.keys = state.keys.saturating_add(1);
        }
        let Some(trigger_state) = state.triggers.get_mut(trigger) else { return admission };
        match known {
            Some((_, first_seen)) => {
                if let Some(entry) = trigger_state.entries.get_mut(&key) {
                    entry.first_seen = first_seen;
                    entry.last_fired = wall;
                    entry.last_fired_at = now;
                    entry.last_seen = wall;
                    entry.last_seen_at = now;
                    entry.window = window;
                }
                trigger_state.touch(&key, &mut state.clock);
            }
            None => {
                let touched = next(&mut state.clock);
                let entry = DedupEntry {
                    first_seen: wall,
                    last_seen: wall,
                    last_fired: wall,
                    last_seen_at: now,
                    last_fired_at: now,
                    window,
                    touched,
                };
                trigger_state.by_age.insert(touched, key.clone());
                trigger_state.entries.insert(key, entry);
            }
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
        let Some(dedup_state) = state.triggers.get(trigger) else { return Vec::new() };
        dedup_state
            .by_age
            .values()
            .rev()
            .filter_map(|key| dedup_state.entries.get(key).map(|entry| (key, entry)))
            .take(MAX_ACTIVE_EVENTS)
            .map(|(key, entry)| ActiveEvent {
                key: key.to_string(),
                state: if entry.is_firing(now) { "firing" } else { "resolved" }.to_string(),
                first_seen: rfc3339(entry.first_seen),
                last_seen: rfc3339(entry.last_seen),
            })
            .collect()
    }

    /// How many keys `trigger` holds and how many it lost to the limits.
    pub fn counts(&self, trigger: &TriggerId) -> DedupCounts {
        let state = lock(&self.dedup);
        state
            .triggers
            .get(trigger)
            .map(|t| DedupCounts { keys: t.entries.len(), evicted: t.evicted })
            .unwrap_or_default()
    }

    fn new_trigger_state(&self) -> TriggerDedup {
        TriggerDedup { removed: self.persist.then(Vec::new), ..TriggerDedup::default() }
    }

    /// The entry of `key` (as [`bounded_key`] made it) of `trigger`, as the store keeps it.
    pub fn stored_entry(&self, trigger: &TriggerId, key: &str) -> Option<StoredDedup> {
        let state = lock(&self.dedup);
        let entry = state.triggers.get(trigger)?.entries.get(key)?;
        Some(StoredDedup {
            first_seen: entry.first_seen,
            last_seen: entry.last_seen,
            last_fired: entry.last_fired,
            window_ms: u64::try_from(entry.window.as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// The keys of `trigger` forgotten (quiet for two windows, or evicted by the limits) since
    /// the last call; empty unless the router is [`persisting`](Router::persisting).
    pub fn take_removed(&self, trigger: &TriggerId) -> Vec<String> {
        let mut state = lock(&self.dedup);
        let Some(removed) = state.triggers.get_mut(trigger).and_then(|t| t.removed.as_mut()) else {
            return Vec::new();
        };
        std::mem::take(removed).into_iter().map(|key| key.to_string()).collect()
    }

    /// Takes back the entries of `trigger` a previous run stored, as they stand now: an entry
    /// quiet for two windows is dropped, and its key returned so that the store forgets it too.
    /// The key limits apply as for new keys.
    pub fn restore(&self, trigger: &TriggerId, mut entries: Vec<(String, StoredDedup)>) -> Vec<String> {
        // Oldest first, so that the least recently seen keys are the first to go at the limits.
        entries.sort_by_key(|(_, stored)| stored.last_seen);
        let now = Instant::now();
        let wall = Utc::now();
        let mut expired = Vec::new();
        let mut state = lock(&self.dedup);
        for (key, stored) in entries {
            let window = Duration::from_millis(stored.window_ms);
            let ago = |time: DateTime<Utc>| (wall - time).to_std().unwrap_or_default();
            let seen_ago = ago(stored.last_seen);
            if key.len() > MAX_DEDUP_KEY_BYTES.saturating_mul(2) || seen_ago > window.saturating_mul(2) {
                expired.push(key);
                continue;
            }
            let at = |ago: Duration| now.checked_sub(ago).unwrap_or(now);
            if !state.triggers.contains_key(trigger) {
                let fresh = self.new_trigger_state();
                state.triggers.insert(trigger.clone(), fresh);
            }
            let key: Arc<str> = Arc::from(key);
            if state.triggers.get(trigger).is_some_and(|t| t.entries.contains_key(&key)) {
                continue;
            }
            state.make_room(trigger, self.limits);
            state.keys = state.keys.saturating_add(1);
            let touched = next(&mut state.clock);
            let Some(trigger_state) = state.triggers.get_mut(trigger) else { continue };
            let entry = DedupEntry {
                first_seen: stored.first_seen,
                last_seen: stored.last_seen,
                last_fired: stored.last_fired,
                last_seen_at: at(seen_ago),
                last_fired_at: at(ago(stored.last_fired)),
                window,
                touched,
            };
            trigger_state.by_age.insert(touched, key.clone());
            trigger_state.entries.insert(key, entry);
        }
        expired
    }

    /// Drops the state of a trigger that was removed.
    pub fn forget(&self, trigger: &TriggerId) {
        let mut state = lock(&self.dedup);
        if let Some(removed) = state.triggers.remove(trigger) {
            state.keys = state.keys.saturating_sub(removed.entries.len());
        }
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
        assert_eq!(states(&router), [("pod-b".into(), "firing".into()), ("pod-a".into(), "firing".into())]);
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

    fn other() -> TriggerId {
        TriggerId { namespace: "ns".into(), service: "svc".into(), trigger: "other".into() }
    }

    #[tokio::test(start_paused = true)]
    async fn long_keys_are_kept_hashed_and_still_deduplicate() {
        let router = Router::new();
        let long = "k".repeat(50_000);
        assert_eq!(router.admit(&id(), dedup(&long), None), Admission::Fire);
        let Admission::Duplicate { key } = router.admit(&id(), dedup(&long), None) else { panic!("not a duplicate") };
        assert!(key.len() <= MAX_DEDUP_KEY_BYTES, "{} bytes kept", key.len());
        assert!(key.starts_with(&"k".repeat(64)) && key.contains("…sha256:"), "{key}");
        let differs_at_the_end = format!("{}j", &long[..long.len() - 1]);
        assert_eq!(router.admit(&id(), dedup(&differs_at_the_end), None), Admission::Fire);
        assert_eq!(router.counts(&id()).keys, 2);
    }

    #[test]
    fn a_long_key_of_multibyte_characters_is_cut_on_a_character_boundary() {
        let key = bounded_key("é".repeat(1000));
        assert!(key.starts_with(&"é".repeat(32)), "{key}");
        assert!(key.len() <= MAX_DEDUP_KEY_BYTES);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trigger_at_its_key_limit_forgets_its_least_recently_seen_key_and_counts_it() {
        let router = Router::with_limits(DedupLimits { keys_per_trigger: 2, keys: 100 });
        router.admit(&id(), dedup("a"), None);
        router.admit(&id(), dedup("b"), None);
        assert_eq!(router.admit(&id(), dedup("a"), None), Admission::Duplicate { key: "a".into() });
        assert_eq!(router.admit(&id(), dedup("c"), None), Admission::Fire);
        assert_eq!(router.counts(&id()), DedupCounts { keys: 2, evicted: 1 });
        assert_eq!(router.admit(&id(), dedup("a"), None), Admission::Duplicate { key: "a".into() });
        assert_eq!(router.admit(&id(), dedup("b"), None), Admission::Fire, "b was forgotten");
        assert_eq!(router.counts(&id()), DedupCounts { keys: 2, evicted: 2 });
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_total_key_limit_the_trigger_holding_most_keys_loses_its_oldest() {
        let router = Router::with_limits(DedupLimits { keys_per_trigger: 100, keys: 4 });
        for key in ["a", "b", "c", "d"] {
            router.admit(&id(), dedup(key), None);
        }
        assert_eq!(router.admit(&other(), dedup("mine"), None), Admission::Fire);
        assert_eq!(router.counts(&id()), DedupCounts { keys: 3, evicted: 1 });
        assert_eq!(router.counts(&other()), DedupCounts { keys: 1, evicted: 0 });
        assert_eq!(router.admit(&id(), dedup("e"), None), Admission::Fire);
        assert_eq!(router.counts(&other()).keys, 1, "the smaller trigger keeps its key");
        assert_eq!(router.admit(&other(), dedup("mine"), None), Admission::Duplicate { key: "mine".into() });
    }

    #[tokio::test(start_paused = true)]
    async fn forgetting_a_trigger_frees_its_keys_for_the_others() {
        let router = Router::with_limits(DedupLimits { keys_per_trigger: 100, keys: 2 });
        router.admit(&id(), dedup("a"), None);
        router.admit(&id(), dedup("b"), None);
        router.forget(&id());
        router.admit(&other(), dedup("x"), None);
        router.admit(&other(), dedup("y"), None);
        assert_eq!(router.counts(&other()), DedupCounts { keys: 2, evicted: 0 });
    }

    #[tokio::test(start_paused = true)]
    async fn the_longest_window_neither_panics_nor_forgets() {
        let router = Router::new();
        let forever = Some(("a".to_string(), Duration::MAX));
        assert_eq!(router.admit(&id(), forever.clone(), None), Admission::Fire);
        tokio::time::advance(Duration::from_secs(5)).await;
        router.admit(&id(), Some(("b".to_string(), Duration::MAX)), None);
        assert_eq!(router.admit(&id(), forever, None), Admission::Duplicate { key: "a".into() });
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
