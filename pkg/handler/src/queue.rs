//! The keyed work queue between the watches and the workers, after client-go's rate-limited
//! work queue: a key is handed to at most one worker at a time, changes to a key that waits are
//! merged into one, a failed key comes back after a per-key exponential backoff until its
//! retries run out, and the number of keys held is bounded.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::sync::Notify;

use crate::change::Change;
use crate::metrics::LoopMetrics;

/// Which object of which handler: the unit of serialisation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    /// The handler's position in its loop.
    pub(crate) handler: usize,
    /// The object's namespace; `None` for cluster-scoped objects.
    pub(crate) namespace: Option<String>,
    /// The object's name.
    pub(crate) name: String,
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(namespace) => write!(f, "{namespace}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// What became of a change handed to [`Queue::add`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Added {
    /// The key was not waiting: it now is.
    New,
    /// The key was already waiting: the change was merged into what it holds.
    Merged,
    /// The queue holds its limit of keys: the change was dropped.
    Dropped,
    /// The queue is closed (the loop is stopping): the change was dropped.
    Closed,
}

/// What [`Queue::done`] decided for a failed key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Nothing to schedule: the key succeeded, was queued again with a newer change, or ran out
    /// of retries.
    None,
    /// Call [`Queue::retry_due`] with this ticket once the delay has passed.
    After(Duration, u64),
    /// The key failed too often and was dropped.
    GaveUp,
}

/// The queue's tunables.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Keys held at once (waiting or waiting for a retry).
    pub(crate) max_keys: usize,
    /// The per-key retry schedule.
    pub(crate) backoff: ExponentialBuilder,
}

#[derive(Default)]
struct State {
    /// Keys ready for a worker, oldest first; each is also in `waiting` and not in `processing`.
    ready: VecDeque<Key>,
    /// The change each waiting key holds.
    waiting: HashMap<Key, Change>,
    /// Keys a worker holds now.
    processing: HashSet<Key>,
    /// Failed keys waiting for their backoff, with their change and ticket.
    retrying: HashMap<Key, (Change, u64)>,
    /// The retry schedule of keys that failed and have not succeeded since.
    failures: HashMap<Key, ExponentialBackoff>,
    next_ticket: u64,
    closed: bool,
}

impl State {
    /// Keys waiting for a worker or for their retry.
    fn waiting_keys(&self) -> usize {
        self.waiting.len().saturating_add(self.retrying.len())
    }

    /// Distinct keys held: waiting, processed or waiting for their retry (at most `max_keys`).
    fn held(&self) -> usize {
        let busy_only = self.processing.iter().filter(|key| !self.waiting.contains_key(*key)).count();
        self.waiting_keys().saturating_add(busy_only)
    }

    /// Makes `key` (holding `change`) wait, ready unless a worker holds it.
    fn wait(&mut self, key: Key, change: Change) {
        if !self.processing.contains(&key) {
            self.ready.push_back(key.clone());
        }
        self.waiting.insert(key, change);
    }
}

/// The queue of one event loop. Shared by its feeders, workers and retry timers.
pub(crate) struct Queue {
    state: Mutex<State>,
    notify: Notify,
    limits: Limits,
    metrics: LoopMetrics,
}

impl Queue {
    /// An empty queue.
    pub(crate) fn new(limits: Limits, metrics: LoopMetrics) -> Arc<Queue> {
        Arc::new(Queue { state: Mutex::new(State::default()), notify: Notify::new(), limits, metrics })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        ktrigger_core::sync::lock(&self.state)
    }

    fn publish_depth(&self, state: &State) {
        self.metrics.depth.set(i64::try_from(state.waiting_keys()).unwrap_or(i64::MAX));
    }

    /// Adds a change of `key`. A key already waiting (or waiting for a retry) keeps one change:
    /// the two merged; a key waiting for a retry becomes ready at once. A new key over the limit
    /// is dropped; a change to a key a worker holds is always kept (it adds no key).
    pub(crate) fn add(&self, key: Key, change: Change) -> Added {
        self.metrics.adds.inc();
        let mut state = self.lock();
        if state.closed {
            return Added::Closed;
        }
        let added = if let Some(held) = state.waiting.remove(&key) {
            state.waiting.insert(key, Change::merge(held, change));
            Added::Merged
        } else if let Some((held, _)) = state.retrying.remove(&key) {
            state.wait(key, Change::merge(held, change));
            Added::Merged
        } else if state.processing.contains(&key) || state.held() < self.limits.max_keys {
            state.wait(key, change);
            Added::New
        } else {
            self.metrics.dropped.inc();
            Added::Dropped
        };
        self.publish_depth(&state);
        drop(state);
        if matches!(added, Added::New | Added::Merged) {
            self.notify.notify_one();
        }
        added
    }

    /// Waits for a ready key and hands it, with its change, to the caller, who must call
    /// [`Queue::done`] with it. `None` once the queue is closed. Cancel-safe.
    pub(crate) async fn next(&self) -> Option<(Key, Change)> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                if state.closed {
                    return None;
                }
                while let Some(key) = state.ready.pop_front() {
                    let Some(change) = state.waiting.remove(&key) else { continue };
                    state.processing.insert(key.clone());
                    self.publish_depth(&state);
                    return Some((key, change));
                }
            }
            notified.await;
        }
    }

    /// Releases `key` after a worker handled `change`. On success its retry schedule is
    /// forgotten; on failure it is scheduled again after its next backoff, merged with any
    /// newer change (which makes it ready at once), or dropped once its retries ran out.
    pub(crate) fn done(&self, key: &Key, change: Change, succeeded: bool) -> Retry {
        let mut state = self.lock();
        state.processing.remove(key);
        let retry = if succeeded {
            state.failures.remove(key);
            Retry::None
        } else {
            let backoff = self.limits.backoff;
            let delay = state.failures.entry(key.clone()).or_insert_with(|| backoff.build()).next();
            match delay {
                None => {
                    state.failures.remove(key);
                    self.metrics.dropped.inc();
                    Retry::GaveUp
                }
                Some(delay) => {
                    self.metrics.retries.inc();
                    if let Some(newer) = state.waiting.remove(key) {
                        state.waiting.insert(key.clone(), Change::merge(change, newer));
                        Retry::None
                    } else {
                        let ticket = state.next_ticket;
                        state.next_ticket = ticket.wrapping_add(1);
                        state.retrying.insert(key.clone(), (change, ticket));
                        Retry::After(delay, ticket)
                    }
                }
            }
        };
        if state.waiting.contains_key(key) {
            state.ready.push_back(key.clone());
            self.notify.notify_one();
        }
        self.publish_depth(&state);
        retry
    }

    /// Makes a key waiting for its retry ready, unless a newer change already did (the ticket
    /// no longer matches).
    pub(crate) fn retry_due(&self, key: &Key, ticket: u64) {
        let mut state = self.lock();
        if state.retrying.get(key).is_some_and(|(_, held)| *held == ticket)
            && let Some((change, _)) = state.retrying.remove(key)
        {
            state.wait(key.clone(), change);
            drop(state);
            self.notify.notify_one();
        }
    }

    /// Stops handing out keys: [`Queue::next`] returns `None` from now on, and adds are refused.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_waiters();
    }

    /// Distinct keys held (waiting, processed, or waiting for a retry).
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.lock().held()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::metrics::Metrics;

    fn key(name: &str) -> Key {
        Key { handler: 0, namespace: Some("ns".into()), name: name.into() }
    }

    fn add(n: u64) -> Change {
        Change::Add(Arc::new(json!({ "n": n })))
    }

    fn update(old: u64, new: u64) -> Change {
        Change::Update { old: Some(Arc::new(json!({ "n": old }))), new: Arc::new(json!({ "n": new })) }
    }

    fn limits(max_keys: usize, max_times: usize) -> Limits {
        let backoff = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(10))
            .with_max_delay(Duration::from_millis(80))
            .with_max_times(max_times);
        Limits { max_keys, backoff }
    }

    fn queue(max_keys: usize, max_times: usize) -> (Arc<Queue>, LoopMetrics) {
        let metrics = Metrics::new().for_loop("test");
        (Queue::new(limits(max_keys, max_times), metrics.clone()), metrics)
    }

    async fn next_now(queue: &Queue) -> Option<(Key, Change)> {
        tokio::time::timeout(Duration::from_millis(50), queue.next()).await.ok().flatten()
    }

    #[tokio::test]
    async fn changes_to_a_waiting_key_are_merged_into_one() {
        let (queue, metrics) = queue(10, 3);
        assert_eq!(queue.add(key("a"), add(1)), Added::New);
        assert_eq!(queue.add(key("a"), update(1, 2)), Added::Merged);
        assert_eq!(queue.add(key("a"), update(2, 3)), Added::Merged);
        assert_eq!(metrics.depth.get(), 1);
        assert_eq!(next_now(&queue).await, Some((key("a"), add(3))));
        assert_eq!(next_now(&queue).await, None, "one key, one hand-out");
        assert_eq!(metrics.adds.get(), 3);
    }

    #[tokio::test]
    async fn a_key_held_by_a_worker_is_not_handed_out_again_until_done() {
        let (queue, _) = queue(10, 3);
        queue.add(key("a"), add(1));
        let (held, change) = next_now(&queue).await.unwrap();
        queue.add(key("a"), update(1, 2));
        queue.add(key("b"), add(1));
        assert_eq!(next_now(&queue).await.map(|(k, _)| k), Some(key("b")), "another key is served");
        assert_eq!(next_now(&queue).await, None, "a is held by the first worker");
        assert_eq!(queue.done(&held, change, true), Retry::None);
        assert_eq!(next_now(&queue).await, Some((key("a"), update(1, 2))), "the change made meanwhile follows");
    }

    #[tokio::test]
    async fn a_failed_key_comes_back_after_a_growing_backoff_then_is_dropped() {
        let (queue, metrics) = queue(10, 2);
        queue.add(key("a"), add(1));
        let mut delays = Vec::new();
        loop {
            let (k, change) = next_now(&queue).await.unwrap();
            match queue.done(&k, change, false) {
                Retry::After(delay, ticket) => {
                    delays.push(delay);
                    assert_eq!(next_now(&queue).await, None, "not before its backoff");
                    queue.retry_due(&k, ticket);
                }
                Retry::GaveUp => break,
                Retry::None => panic!("a failed key without a newer change is retried or dropped"),
            }
        }
        assert_eq!(delays, [Duration::from_millis(10), Duration::from_millis(20)]);
        assert_eq!(metrics.retries.get(), 2);
        assert_eq!(metrics.dropped.get(), 1);
        assert_eq!(queue.held(), 0);
    }

    #[tokio::test]
    async fn success_resets_the_backoff() {
        let (queue, _) = queue(10, 5);
        queue.add(key("a"), add(1));
        let (k, change) = next_now(&queue).await.unwrap();
        let Retry::After(first, ticket) = queue.done(&k, change, false) else { panic!("retried") };
        queue.retry_due(&k, ticket);
        let (k, change) = next_now(&queue).await.unwrap();
        assert_eq!(queue.done(&k, change, true), Retry::None);
        queue.add(key("a"), update(1, 2));
        let (k, change) = next_now(&queue).await.unwrap();
        assert_eq!(queue.done(&k, change, false), Retry::After(first, ticket + 1));
    }

    #[tokio::test]
    async fn a_newer_change_to_a_retrying_key_makes_it_ready_at_once_with_the_oldest_old_state() {
        let (queue, _) = queue(10, 5);
        queue.add(key("a"), update(1, 2));
        let (k, change) = next_now(&queue).await.unwrap();
        let Retry::After(_, ticket) = queue.done(&k, change, false) else { panic!("retried") };
        assert_eq!(queue.add(key("a"), update(2, 3)), Added::Merged);
        assert_eq!(next_now(&queue).await, Some((key("a"), update(1, 3))));
        queue.retry_due(&k, ticket);
        assert_eq!(next_now(&queue).await, None, "a stale retry ticket does nothing");
    }

    #[tokio::test]
    async fn a_change_made_while_a_failing_key_was_processed_is_merged_and_ready_at_once() {
        let (queue, metrics) = queue(10, 5);
        queue.add(key("a"), add(1));
        let (k, change) = next_now(&queue).await.unwrap();
        queue.add(key("a"), update(1, 2));
        assert_eq!(queue.done(&k, change, false), Retry::None);
        assert_eq!(metrics.retries.get(), 1);
        assert_eq!(next_now(&queue).await, Some((key("a"), add(2))));
    }

    #[tokio::test]
    async fn over_the_key_limit_new_keys_are_dropped_and_waiting_ones_still_merge() {
        let (queue, metrics) = queue(2, 3);
        assert_eq!(queue.add(key("a"), add(1)), Added::New);
        assert_eq!(queue.add(key("b"), add(1)), Added::New);
        assert_eq!(queue.add(key("c"), add(1)), Added::Dropped);
        assert_eq!(queue.add(key("a"), update(1, 2)), Added::Merged);
        assert_eq!(metrics.dropped.get(), 1);
        assert_eq!(queue.held(), 2);
        let (a, change) = next_now(&queue).await.unwrap();
        assert_eq!(queue.add(key("a"), update(2, 3)), Added::New, "a change to a held key adds no key");
        assert_eq!(queue.add(key("d"), add(1)), Added::Dropped);
        assert!(matches!(queue.done(&a, change, false), Retry::None), "merged with the newer change");
        assert_eq!(queue.held(), 2);
    }

    #[tokio::test]
    async fn a_closed_queue_hands_out_nothing_and_wakes_its_waiters() {
        let (queue, _) = queue(10, 3);
        let waiter = tokio::spawn({
            let queue = queue.clone();
            async move { queue.next().await }
        });
        tokio::task::yield_now().await;
        queue.close();
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap(), None);
        assert_eq!(queue.add(key("a"), add(1)), Added::Closed);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Add(u8),
        Take,
        Done(bool),
        RetryDue,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![(0u8..6).prop_map(Op::Add), Just(Op::Take), any::<bool>().prop_map(Op::Done), Just(Op::RetryDue),]
    }

    proptest! {
        /// Whatever the order of adds, hand-outs, results and retries: no key is handed out
        /// while held, the bound holds, and nothing panics.
        #[test]
        fn a_key_is_never_held_twice_and_the_bound_holds(ops in proptest::collection::vec(op(), 0..200)) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            runtime.block_on(async {
                let (queue, _) = queue(4, 3);
                let mut held: Vec<(Key, Change)> = Vec::new();
                let mut tickets: Vec<(Key, u64)> = Vec::new();
                let mut n = 0;
                for op in ops {
                    n += 1;
                    match op {
                        Op::Add(k) => { queue.add(key(&k.to_string()), add(n)); }
                        Op::Take => {
                            let next = tokio::time::timeout(Duration::from_millis(1), queue.next()).await;
                            if let Ok(Some((k, change))) = next {
                                prop_assert!(!held.iter().any(|(h, _)| *h == k), "{k:?} handed out twice");
                                held.push((k, change));
                            }
                        }
                        Op::Done(ok) => if let Some((k, change)) = held.pop()
                            && let Retry::After(_, ticket) = queue.done(&k, change, ok)
                        {
                            tickets.push((k, ticket));
                        },
                        Op::RetryDue => if let Some((k, ticket)) = tickets.pop() {
                            queue.retry_due(&k, ticket);
                        },
                    }
                    prop_assert!(queue.held() <= 4);
                }
                Ok(())
            })?;
        }
    }
}
