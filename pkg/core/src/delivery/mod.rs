//! Delivery: a bounded queue per destination and a worker that sends with retries, backoff
//! with jitter, Retry-After, a per-attempt timeout and a visible dead-letter outcome.
//!
//! The queue is a trait: the state store behind the engine (`state`) opens it, in memory or
//! durable, and the worker does not know which. Delivery ids are deterministic (trigger,
//! destination and event id), so a retry, a restart or a failover sends the same id.
//!
//! Queues are bounded in bytes as well as in count: every queued event is charged, once per
//! trigger however many destinations share it, to that trigger's [`TriggerBudget`], itself part
//! of one [`QueueBudget`] for the whole process. A queue's capacity counts the deliveries its
//! worker holds (being sent, or waiting behind another delivery of their object) as well as
//! those waiting in it, so the worker may take everything out and still be bounded.
//!
//! The worker ([`worker`]) sends up to `concurrency` deliveries at once, per object in order
//! when asked ([`ordering`]), in batches when asked.

mod ordering;
mod worker;

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};
use futures::FutureExt;
use ktrigger_api::{DestinationSpec, OverflowPolicy, parse_duration};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tracing::Instrument;

pub(crate) use worker::{Flow, run_worker};

use crate::event::{Event, SharedEvent, TriggerId, stable_id};
use crate::registry::{DeliveryError, DeliveryRequest, Destination, Receipt};
use crate::state::Commit;
use crate::stats::{DestinationOutcome, TriggerStats};
use crate::sync::lock;
use crate::trace;

/// Default number of deliveries waiting per destination.
pub const DEFAULT_QUEUE_SIZE: usize = 1000;
/// Longest Retry-After we honour; a receiver asking for more is retried after this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Default bytes one trigger's queued deliveries may hold.
pub const DEFAULT_MAX_QUEUE_BYTES_PER_TRIGGER: u64 = 8 << 20;
/// Default bytes the queued deliveries of all triggers may hold together.
pub const DEFAULT_MAX_QUEUE_BYTES: u64 = 64 << 20;

/// One event on its way to one destination.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Deterministic id, the same across retries, restarts and failover (receivers may dedupe on it).
    pub id: String,
    /// The trigger that fired.
    pub trigger: TriggerId,
    /// The event that matched.
    pub event: SharedEvent,
    /// When the trigger fired it, for the delivery latency.
    pub fired_at: std::time::Instant,
    /// Attempts already made (before a restart, for a restored delivery).
    pub attempts: u32,
    /// Not to be attempted before this time (the backoff of a restored delivery).
    pub not_before: Option<DateTime<Utc>>,
    /// The bytes of the event held against the trigger's queue budget, released once every
    /// delivery sharing the charge is gone.
    pub charge: Option<Arc<QueueCharge>>,
    /// The span of the event that caused it, parent of each attempt's span; none for a delivery
    /// restored after a restart. It keeps that span open until the delivery is done.
    pub span: tracing::Span,
}

impl Delivery {
    /// A new delivery of `event` for `trigger` to the destination labelled `destination`, fired
    /// now, charged to no budget, within the current span.
    pub fn new(trigger: TriggerId, event: SharedEvent, destination: &str) -> Self {
        let id = stable_id(&[&trigger.to_string(), destination, &event.meta.id]);
        Delivery {
            id,
            trigger,
            event,
            fired_at: std::time::Instant::now(),
            attempts: 0,
            not_before: None,
            charge: None,
            span: tracing::Span::current(),
        }
    }
}

/// Why a delivery could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue holds as many deliveries as it may.
    #[error("delivery queue is full ({0} waiting)")]
    Full(usize),
    /// The trigger's queued deliveries would hold more bytes than its share of the budget.
    #[error(
        "queue byte limit: this trigger's queued deliveries hold {held} bytes, an event of {event} more exceeds its limit of {limit}"
    )]
    TriggerBytes {
        /// Bytes the trigger holds already.
        held: u64,
        /// Estimated bytes of the refused event.
        event: u64,
        /// The trigger's limit now.
        limit: u64,
    },
    /// The queued deliveries of all triggers would hold more bytes than the process allows.
    #[error(
        "queue byte limit: all triggers' queued deliveries hold {held} bytes, an event of {event} more exceeds the total limit of {limit}"
    )]
    TotalBytes {
        /// Bytes all triggers hold already.
        held: u64,
        /// Estimated bytes of the refused event.
        event: u64,
        /// The total limit.
        limit: u64,
    },
    /// The queue no longer accepts deliveries (shutting down).
    #[error("delivery queue is closed")]
    Closed,
}

/// Where deliveries wait for their destination's worker.
#[async_trait]
pub trait DeliveryQueue: Send + Sync {
    /// Adds a delivery, or refuses at once when full (waiting and popped deliveries together
    /// reach the capacity) or closed; never blocks the trigger. The delivery may be popped at
    /// once; the returned commit resolves once it is durable.
    fn push(&self, delivery: Delivery) -> Result<Commit, QueueError>;
    /// The next delivery; `None` once the queue is closed and empty.
    async fn pop(&self) -> Option<Delivery>;
    /// Remembers that a popped delivery failed `attempts` times and waits until `next` before
    /// its next attempt, so that a restart continues its backoff instead of starting over.
    fn record_attempt(&self, delivery: &Delivery, attempts: u32, next: DateTime<Utc>);
    /// Marks a popped delivery as finished (delivered or dead-lettered) so a durable queue can
    /// forget it; until then it would be redelivered after a restart.
    fn ack(&self, id: &str);
    /// Stops accepting deliveries; those already queued are still popped.
    fn close(&self);
    /// Deliveries waiting.
    fn len(&self) -> usize;
    /// Deliveries popped and not acked yet: being delivered, or waiting for a retry.
    fn in_flight(&self) -> usize;
    /// Whether nothing is waiting.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The in-memory queue: bounded, FIFO, lost on restart.
#[derive(Debug)]
pub(crate) struct MemoryQueue {
    items: Mutex<VecDeque<Delivery>>,
    capacity: usize,
    closed: AtomicBool,
    ready: Notify,
    in_flight: AtomicUsize,
}

impl MemoryQueue {
    /// A queue holding at most `capacity` deliveries.
    pub fn new(capacity: usize) -> Self {
        MemoryQueue {
            items: Mutex::new(VecDeque::new()),
            capacity,
            closed: AtomicBool::new(false),
            ready: Notify::new(),
            in_flight: AtomicUsize::new(0),
        }
    }
}

#[async_trait]
impl DeliveryQueue for MemoryQueue {
    fn push(&self, delivery: Delivery) -> Result<Commit, QueueError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(QueueError::Closed);
        }
        let mut items = lock(&self.items);
        let held = items.len().saturating_add(self.in_flight.load(Ordering::Acquire));
        if held >= self.capacity {
            return Err(QueueError::Full(held));
        }
        items.push_back(delivery);
        drop(items);
        self.ready.notify_one();
        Ok(Commit::done())
    }

    async fn pop(&self) -> Option<Delivery> {
        loop {
            let notified = self.ready.notified();
            if let Some(delivery) = lock(&self.items).pop_front() {
                self.in_flight.fetch_add(1, Ordering::AcqRel);
                return Some(delivery);
            }
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            notified.await;
        }
    }

    fn record_attempt(&self, _delivery: &Delivery, _attempts: u32, _next: DateTime<Utc>) {}

    fn ack(&self, _id: &str) {
        let _ = self.in_flight.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ready.notify_waiters();
        self.ready.notify_one();
    }

    fn len(&self) -> usize {
        lock(&self.items).len()
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// Byte limits of the delivery queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Most bytes one trigger's queued deliveries may hold.
    pub per_trigger: u64,
    /// Most bytes the queued deliveries of all triggers may hold together.
    pub total: u64,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits { per_trigger: DEFAULT_MAX_QUEUE_BYTES_PER_TRIGGER, total: DEFAULT_MAX_QUEUE_BYTES }
    }
}

/// The byte budget that the queues of every trigger share; one per engine.
#[derive(Debug)]
pub struct QueueBudget {
    limits: QueueLimits,
    held: AtomicU64,
    triggers: AtomicU64,
}

impl QueueBudget {
    /// A budget with nothing held yet.
    pub fn new(limits: QueueLimits) -> Arc<Self> {
        Arc::new(QueueBudget { limits, held: AtomicU64::new(0), triggers: AtomicU64::new(0) })
    }

    /// The budget of one more trigger, counted among the running triggers until it is dropped.
    pub fn trigger(self: &Arc<Self>) -> Arc<TriggerBudget> {
        self.triggers.fetch_add(1, Ordering::AcqRel);
        Arc::new(TriggerBudget { shared: self.clone(), held: AtomicU64::new(0) })
    }

    /// Bytes the queued deliveries of all triggers hold now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Acquire)
    }

    /// The most one trigger may hold now. Each running trigger is entitled to an equal part
    /// of the total, so that triggers filling theirs can never take another's.
    fn share(&self) -> u64 {
        let triggers = self.triggers.load(Ordering::Acquire).max(1);
        self.limits.per_trigger.min(self.limits.total / triggers)
    }
}

/// One trigger's part of the [`QueueBudget`].
#[derive(Debug)]
pub struct TriggerBudget {
    shared: Arc<QueueBudget>,
    held: AtomicU64,
}

impl TriggerBudget {
    /// Bytes this trigger's queued deliveries hold now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Acquire)
    }

    /// Whether `bytes` more would fit now, and whether they could ever fit (not more than this
    /// trigger's share on their own).
    pub fn room(&self, bytes: u64) -> (bool, bool) {
        let limit = self.shared.share();
        let fits = |held: u64, limit: u64| held.checked_add(bytes).is_some_and(|sum| sum <= limit);
        let now = fits(self.held(), limit) && fits(self.shared.held(), self.shared.limits.total);
        (now, bytes <= limit)
    }

    /// Holds `bytes` for one event until the returned charge (shared by the event's
    /// deliveries) is dropped; refused when this trigger or all triggers would exceed a limit.
    pub fn charge(self: &Arc<Self>, bytes: u64) -> Result<Arc<QueueCharge>, QueueError> {
        let limit = self.shared.share();
        add_within(&self.held, bytes, limit).map_err(|held| QueueError::TriggerBytes { held, event: bytes, limit })?;
        let total = self.shared.limits.total;
        if let Err(held) = add_within(&self.shared.held, bytes, total) {
            subtract(&self.held, bytes);
            return Err(QueueError::TotalBytes { held, event: bytes, limit: total });
        }
        Ok(Arc::new(QueueCharge { budget: self.clone(), bytes }))
    }
}

impl Drop for TriggerBudget {
    fn drop(&mut self) {
        subtract(&self.shared.triggers, 1);
    }
}

/// The bytes of one event held against a trigger's budget; released when dropped.
#[derive(Debug)]
pub struct QueueCharge {
    budget: Arc<TriggerBudget>,
    bytes: u64,
}

impl Drop for QueueCharge {
    fn drop(&mut self) {
        subtract(&self.budget.held, self.bytes);
        subtract(&self.budget.shared.held, self.bytes);
    }
}

/// Adds `bytes` to `counter` unless the sum would exceed `limit`; the current value otherwise.
fn add_within(counter: &AtomicU64, bytes: u64, limit: u64) -> Result<u64, u64> {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| held.checked_add(bytes).filter(|sum| *sum <= limit))
}

fn subtract(counter: &AtomicU64, amount: u64) {
    let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| Some(held.saturating_sub(amount)));
}

/// Heap bytes a JSON map entry costs besides its key text and value: the key's `String` and
/// the map's own bookkeeping, roughly.
const MAP_ENTRY_OVERHEAD: u64 = 40;

/// An estimate of the memory an event holds: every JSON node, string and key. Counting nodes,
/// not only text, charges ten thousand small fields what they cost, not their few bytes of JSON.
pub fn event_bytes(event: &Event) -> u64 {
    let node = std::mem::size_of::<Value>() as u64;
    let mut total = std::mem::size_of::<Event>() as u64;
    let mut pending: Vec<&Value> = vec![&event.object];
    pending.extend(event.old_object.as_ref());
    // An explicit stack rather than recursion: the depth of a value is the sender's choice.
    while let Some(value) = pending.pop() {
        total = total.saturating_add(node);
        match value {
            Value::String(text) => total = total.saturating_add(text.len() as u64),
            Value::Array(items) => pending.extend(items),
            Value::Object(map) => {
                for (key, item) in map {
                    total = total.saturating_add(key.len() as u64).saturating_add(MAP_ENTRY_OVERHEAD);
                    pending.push(item);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    total
}

/// Queues `event` for each of a trigger's destinations, charged once to `budget` for all of
/// them. A delivery that cannot be queued (queue full or closed, byte limit reached) is
/// dead-lettered at once and counted (callers that make their source wait check [`room`]
/// first); the first such reason is returned beside the commits of the deliveries that were
/// queued.
pub fn enqueue(
    trigger: &TriggerId,
    event: &SharedEvent,
    targets: &[(Target, Arc<dyn DeliveryQueue>)],
    budget: &Arc<TriggerBudget>,
    stats: &TriggerStats,
) -> (Vec<Commit>, Option<String>) {
    let charge = match budget.charge(event_bytes(event)) {
        Ok(charge) => charge,
        Err(error) => {
            for (target, _) in targets {
                let id = stable_id(&[&trigger.to_string(), &target.label, &event.meta.id]);
                refuse(trigger, &id, target, &error, stats);
            }
            return (Vec::new(), Some(error.to_string()));
        }
    };
    let mut commits = Vec::with_capacity(targets.len());
    let mut refused = None;
    for (target, queue) in targets {
        let mut delivery = Delivery::new(trigger.clone(), event.clone(), &target.label);
        delivery.charge = Some(charge.clone());
        let id = delivery.id.clone();
        match queue.push(delivery) {
            Ok(commit) => commits.push(commit),
            Err(error) => {
                refuse(trigger, &id, target, &error, stats);
                refused.get_or_insert_with(|| format!("{}: {error}", target.label));
            }
        }
    }
    (commits, refused)
}

fn refuse(trigger: &TriggerId, id: &str, target: &Target, error: &QueueError, stats: &TriggerStats) {
    let reason = format!("{}: {error}", target.label);
    stats.record_failed_attempt(&reason);
    stats.record_dead_lettered();
    stats.record_destination(&target.label, DestinationOutcome::DeadLettered);
    if matches!(error, QueueError::TriggerBytes { .. } | QueueError::TotalBytes { .. }) {
        stats.record_queue_byte_limited();
    }
    tracing::error!(trigger = %trigger, destination = %target.label, delivery = %id, reason = %reason,
        "delivery dead-lettered");
}

/// How a destination's deliveries are attempted.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Delay before the first retry.
    pub backoff: Duration,
    /// Longest delay between attempts.
    pub max_backoff: Duration,
    /// Time limit of one attempt.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            timeout: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The policy of a destination spec, defaults filled in. The spec was validated already.
    pub fn from_spec(spec: &DestinationSpec) -> Result<Self, String> {
        let mut policy = RetryPolicy::default();
        if let Some(timeout) = &spec.timeout {
            policy.timeout = parse_duration(timeout)?;
        }
        if let Some(retry) = &spec.retry {
            if let Some(attempts) = retry.max_attempts {
                policy.max_attempts = attempts.max(1);
            }
            if let Some(backoff) = &retry.backoff {
                policy.backoff = parse_duration(backoff)?;
            }
            if let Some(max) = &retry.max_backoff {
                policy.max_backoff = parse_duration(max)?;
            }
        }
        policy.max_backoff = policy.max_backoff.max(policy.backoff);
        Ok(policy)
    }

    fn delays(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_min_delay(self.backoff)
            .with_max_delay(self.max_backoff)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The destination accepted it.
    Delivered {
        /// Attempts used.
        attempts: u32,
        /// What the destination answered.
        receipt: Receipt,
    },
    /// Given up: the reason of the last failure.
    DeadLettered {
        /// Attempts used.
        attempts: u32,
        /// Why it failed for good.
        reason: String,
    },
}

/// A destination together with its name for logs, its retry policy and how its worker sends.
#[derive(Clone)]
pub struct Target {
    /// `type` of the destination plus its position, e.g. `webhook#0`.
    pub label: String,
    /// The destination.
    pub destination: Arc<dyn Destination>,
    /// Retries and timeout.
    pub policy: RetryPolicy,
    /// Queue size, concurrency, ordering, overflow policy and batching.
    pub flow: Flow,
}

/// Whether an event can be queued now for the destinations that make their source wait
/// ([`OverflowPolicy::Backpressure`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Room {
    /// Queue it: there is room, or no destination waits (those without room dead-letter it).
    Now,
    /// A waiting destination's queue or the byte budget is full now: why.
    Later(String),
}

/// Whether an event of `bytes` fits now in the queues of the destinations that make their source
/// wait, and in the trigger's byte budget. An event larger than the trigger's whole share can
/// never fit: it is [`Room::Now`], and [`enqueue`] dead-letters it.
pub fn room(targets: &[(Target, Arc<dyn DeliveryQueue>)], budget: &TriggerBudget, bytes: u64) -> Room {
    let waiting: Vec<_> =
        targets.iter().filter(|(target, _)| target.flow.overflow == OverflowPolicy::Backpressure).collect();
    if waiting.is_empty() {
        return Room::Now;
    }
    for (target, queue) in waiting {
        let held = queue.len().saturating_add(queue.in_flight());
        if held >= target.flow.queue_size {
            return Room::Later(format!("{}: {}", target.label, QueueError::Full(held)));
        }
    }
    match budget.room(bytes) {
        (false, true) => Room::Later("queue byte limit: this trigger's queued deliveries are at their limit".into()),
        _ => Room::Now,
    }
}

/// Attempts one delivery until it succeeds, fails permanently or runs out of attempts,
/// continuing from the attempts it already had and waiting until its `not_before`; each failed
/// attempt that will be retried is passed to `on_retry` with the time of the next one.
/// A panicking destination counts as a transient failure.
pub async fn deliver_with_retries(
    target: &Target,
    delivery: &Delivery,
    stats: &TriggerStats,
    on_retry: impl Fn(u32, DateTime<Utc>),
) -> Outcome {
    deliver_all_with_retries(target, std::slice::from_ref(delivery), stats, |_, attempts, next| {
        on_retry(attempts, next)
    })
    .await
}

/// [`deliver_with_retries`] for deliveries sent together: one request for all of them (a batch)
/// when there are several, retried as a whole. Counters count each delivery; `on_retry` is
/// told of each.
pub async fn deliver_all_with_retries(
    target: &Target,
    deliveries: &[Delivery],
    stats: &TriggerStats,
    on_retry: impl Fn(&Delivery, u32, DateTime<Utc>),
) -> Outcome {
    let Some(first) = deliveries.first() else {
        return Outcome::Delivered { attempts: 0, receipt: Receipt::default() };
    };
    let mut delays = target.policy.delays();
    let mut attempt: u32 = deliveries.iter().map(|d| d.attempts).max().unwrap_or(0);
    for _ in 0..attempt.min(target.policy.max_attempts) {
        delays.next();
    }
    let not_before = deliveries.iter().filter_map(|d| d.not_before).max();
    if let Some(wait) = not_before.and_then(|at| (at - Utc::now()).to_std().ok()) {
        tokio::time::sleep(wait.min(MAX_RETRY_AFTER)).await;
    }
    loop {
        attempt = attempt.saturating_add(1);
        let requests: Vec<DeliveryRequest<'_>> = deliveries
            .iter()
            .map(|d| DeliveryRequest { id: &d.id, trigger: &d.trigger, event: &d.event, attempt })
            .collect();
        let span = trace::deliver_span(&first.span, &target.label, &first.id, attempt);
        let result = attempt_once(target, &requests).instrument(span.clone()).await;
        span.record("outcome", attempt_outcome(&result, attempt, target.policy.max_attempts));
        drop(span);
        let error = match result {
            Ok(receipt) => {
                let answer = receipt.detail.as_ref().map(|detail| format!("{}: {detail}", target.label));
                for delivery in deliveries {
                    stats.record_delivered(delivery.fired_at.elapsed(), answer.clone());
                    stats.record_destination(&target.label, DestinationOutcome::Delivered);
                }
                tracing::info!(trigger = %first.trigger, destination = %target.label, delivery = %first.id,
                    deliveries = deliveries.len(), attempt, detail = receipt.detail.as_deref().unwrap_or(""),
                    "delivered");
                return Outcome::Delivered { attempts: attempt, receipt };
            }
            Err(error) => error,
        };
        let reason = format!("{}: {error}", target.label);
        for _ in deliveries {
            stats.record_failed_attempt(&reason);
            stats.record_destination(&target.label, DestinationOutcome::Failed);
        }
        let wait = match &error {
            DeliveryError::Permanent { .. } => None,
            DeliveryError::Transient { .. } if attempt >= target.policy.max_attempts => None,
            DeliveryError::Transient { retry_after: Some(after), .. } => {
                delays.next();
                Some((*after).min(MAX_RETRY_AFTER))
            }
            DeliveryError::Transient { retry_after: None, .. } => delays.next(),
        };
        let Some(wait) = wait else {
            return Outcome::DeadLettered { attempts: attempt, reason: error.to_string() };
        };
        tracing::warn!(trigger = %first.trigger, destination = %target.label, delivery = %first.id,
            deliveries = deliveries.len(), attempt, retry_in = ?wait, error = %error, "delivery attempt failed; retrying");
        let next = chrono::Duration::from_std(wait).ok().and_then(|wait| Utc::now().checked_add_signed(wait));
        for delivery in deliveries {
            on_retry(delivery, attempt, next.unwrap_or_else(Utc::now));
        }
        tokio::time::sleep(wait).await;
    }
}

/// What an attempt's span records: `delivered`, `retrying`, or `failed` when no attempt follows.
fn attempt_outcome(result: &Result<Receipt, DeliveryError>, attempt: u32, max_attempts: u32) -> &'static str {
    match result {
        Ok(_) => "delivered",
        Err(DeliveryError::Transient { .. }) if attempt < max_attempts => "retrying",
        Err(_) => "failed",
    }
}

async fn attempt_once(target: &Target, requests: &[DeliveryRequest<'_>]) -> Result<Receipt, DeliveryError> {
    let call = match requests {
        [single] => target.destination.deliver(single),
        many => target.destination.deliver_batch(many),
    };
    let call = AssertUnwindSafe(call).catch_unwind();
    match tokio::time::timeout(target.policy.timeout, call).await {
        Err(_) => Err(DeliveryError::transient(format!("timed out after {:?}", target.policy.timeout))),
        Ok(Err(panic)) => Err(DeliveryError::transient(format!("destination panicked: {}", panic_message(&panic)))),
        Ok(Ok(result)) => result,
    }
}

/// The message of a caught panic.
pub fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// The event a dead-letter destination receives: why and where a delivery failed, and the
/// original event.
pub fn dead_letter_event(delivery: &Delivery, label: &str, attempts: u32, reason: &str) -> Event {
    let original = &delivery.event;
    let mut event = Event::new(
        "dead-letter",
        "dead-letter",
        json!({
            "deliveryId": delivery.id,
            "destination": label,
            "attempts": attempts,
            "reason": reason,
            "event": original.meta,
            "object": original.object,
        }),
    );
    event.meta.preset = original.meta.preset.clone();
    event.meta.cluster = original.meta.cluster.clone();
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::DeliveryError;
    use std::sync::atomic::AtomicU32;

    /// A destination that answers from a script, one answer per attempt, and records when.
    struct Scripted {
        answers: Mutex<VecDeque<Result<Receipt, DeliveryError>>>,
        calls: AtomicU32,
        times: Mutex<Vec<tokio::time::Instant>>,
    }

    impl Scripted {
        fn new(answers: Vec<Result<Receipt, DeliveryError>>) -> Arc<Self> {
            Arc::new(Scripted {
                answers: Mutex::new(answers.into()),
                calls: AtomicU32::new(0),
                times: Mutex::default(),
            })
        }
    }

    #[async_trait]
    impl Destination for Scripted {
        fn render(&self, _: &DeliveryRequest<'_>) -> Result<serde_json::Value, DeliveryError> {
            Ok(json!({}))
        }
        async fn deliver(&self, _: &DeliveryRequest<'_>) -> Result<Receipt, DeliveryError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            lock(&self.times).push(tokio::time::Instant::now());
            match lock(&self.answers).pop_front() {
                Some(answer) => answer,
                None => panic!("no more scripted answers"),
            }
        }
    }

    fn target(destination: Arc<dyn Destination>, max_attempts: u32) -> Target {
        Target {
            label: "scripted#0".into(),
            destination,
            policy: RetryPolicy {
                max_attempts,
                backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(8),
                timeout: Duration::from_secs(5),
            },
            flow: Flow::default(),
        }
    }

    fn delivery() -> Delivery {
        let id = TriggerId { namespace: String::new(), service: "s".into(), trigger: "t".into() };
        Delivery::new(id, Arc::new(Event::new("cron", "fire", json!({}))), "scripted#0")
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_with_growing_backoff() {
        let dest = Scripted::new(vec![
            Err(DeliveryError::transient("503")),
            Err(DeliveryError::transient("503")),
            Err(DeliveryError::transient("503")),
            Ok(Receipt::default()),
        ]);
        let stats = TriggerStats::default();
        let outcome = deliver_with_retries(&target(dest.clone(), 5), &delivery(), &stats, |_, _| {}).await;
        assert!(matches!(outcome, Outcome::Delivered { attempts: 4, .. }), "{outcome:?}");
        let times = lock(&dest.times).clone();
        let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps[0] >= Duration::from_secs(1), "{gaps:?}");
        assert!(gaps.iter().all(|g| *g <= Duration::from_secs(16)), "jitter stays within twice the cap: {gaps:?}");
        assert!(gaps[2] > gaps[0], "backoff grows: {gaps:?}");
        assert_eq!(stats.snapshot().failed, 3);
        assert_eq!(stats.snapshot().delivered, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn what_the_destination_answered_is_kept_for_status() {
        let task = Receipt { detail: Some("task 7 completed".into()) };
        let dest = Scripted::new(vec![Ok(task), Ok(Receipt::default())]);
        let stats = TriggerStats::default();
        deliver_with_retries(&target(dest.clone(), 1), &delivery(), &stats, |_, _| {}).await;
        assert_eq!(stats.snapshot().last_delivery.as_deref(), Some("scripted#0: task 7 completed"));
        deliver_with_retries(&target(dest, 1), &delivery(), &stats, |_, _| {}).await;
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.delivered, 2);
        assert_eq!(snapshot.last_delivery.as_deref(), Some("scripted#0: task 7 completed"), "kept until a new answer");
        assert_eq!(snapshot.to_status("t").last_delivery, snapshot.last_delivery);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured() {
        let dest = Scripted::new(vec![
            Err(DeliveryError::Transient { reason: "429".into(), retry_after: Some(Duration::from_secs(42)) }),
            Ok(Receipt::default()),
        ]);
        let outcome =
            deliver_with_retries(&target(dest.clone(), 3), &delivery(), &TriggerStats::default(), |_, _| {}).await;
        assert!(matches!(outcome, Outcome::Delivered { attempts: 2, .. }));
        let times = lock(&dest.times).clone();
        assert_eq!(times[1] - times[0], Duration::from_secs(42));
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failures_are_dead_lettered_at_once() {
        let dest = Scripted::new(vec![Err(DeliveryError::permanent("HTTP 400: bad request"))]);
        let stats = TriggerStats::default();
        let outcome = deliver_with_retries(&target(dest.clone(), 5), &delivery(), &stats, |_, _| {}).await;
        assert_eq!(outcome, Outcome::DeadLettered { attempts: 1, reason: "HTTP 400: bad request".into() });
        assert_eq!(dest.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_run_out_then_dead_letter_with_the_last_reason() {
        let dest = Scripted::new(vec![
            Err(DeliveryError::transient("connection refused")),
            Err(DeliveryError::transient("HTTP 502")),
        ]);
        let outcome = deliver_with_retries(&target(dest, 2), &delivery(), &TriggerStats::default(), |_, _| {}).await;
        assert_eq!(outcome, Outcome::DeadLettered { attempts: 2, reason: "HTTP 502".into() });
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_destination_is_a_failed_attempt() {
        let dest = Scripted::new(vec![]);
        let outcome = deliver_with_retries(&target(dest, 1), &delivery(), &TriggerStats::default(), |_, _| {}).await;
        assert_eq!(
            outcome,
            Outcome::DeadLettered { attempts: 1, reason: "destination panicked: no more scripted answers".into() }
        );
    }

    struct Hanging;

    #[async_trait]
    impl Destination for Hanging {
        fn render(&self, _: &DeliveryRequest<'_>) -> Result<serde_json::Value, DeliveryError> {
            Ok(json!({}))
        }
        async fn deliver(&self, _: &DeliveryRequest<'_>) -> Result<Receipt, DeliveryError> {
            std::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_destination_times_out() {
        let outcome =
            deliver_with_retries(&target(Arc::new(Hanging), 1), &delivery(), &TriggerStats::default(), |_, _| {}).await;
        assert_eq!(outcome, Outcome::DeadLettered { attempts: 1, reason: "timed out after 5s".into() });
    }

    #[tokio::test(start_paused = true)]
    async fn dead_lettered_deliveries_reach_the_dead_letter_destination_with_the_reason() {
        let failing = Scripted::new(vec![Err(DeliveryError::permanent("HTTP 404"))]);
        let letters = Scripted::new(vec![Ok(Receipt::default())]);
        let queue: Arc<dyn DeliveryQueue> = Arc::new(MemoryQueue::new(4));
        queue.push(delivery()).unwrap();
        queue.close();
        let stats = Arc::new(TriggerStats::default());
        run_worker(queue, target(failing, 3), Some(target(letters.clone(), 1)), stats.clone(), Default::default())
            .await;
        assert_eq!(letters.calls.load(Ordering::SeqCst), 1);
        assert_eq!(stats.snapshot().dead_lettered, 1);
    }

    fn big_event(bytes: usize) -> SharedEvent {
        Arc::new(Event::new("feed", "create", json!({"data": "x".repeat(bytes)})))
    }

    fn queued_targets(count: usize) -> Vec<(Target, Arc<dyn DeliveryQueue>)> {
        (0..count)
            .map(|_| {
                let queue: Arc<dyn DeliveryQueue> = Arc::new(MemoryQueue::new(100));
                (target(Scripted::new(vec![]), 1), queue)
            })
            .collect()
    }

    fn trigger_id() -> TriggerId {
        TriggerId { namespace: "ns".into(), service: "s".into(), trigger: "t".into() }
    }

    #[test]
    fn event_bytes_charge_at_least_the_json_text_and_more_for_many_small_fields() {
        let big = big_event(900_000);
        let big_text = serde_json::to_vec(big.as_ref()).unwrap().len() as u64;
        assert!(event_bytes(&big) >= big_text, "{} < {big_text}", event_bytes(&big));
        assert!(event_bytes(&big) < big_text + 4096, "a single string costs about its length");
        let fields: serde_json::Map<String, Value> = (0..10_000).map(|n| (format!("f{n}"), json!(n))).collect();
        let small = Event::new("feed", "create", Value::Object(fields));
        let small_text = serde_json::to_vec(&small).unwrap().len() as u64;
        assert!(event_bytes(&small) > 5 * small_text, "{} vs {small_text}", event_bytes(&small));
    }

    #[test]
    fn an_event_shared_by_several_destinations_is_charged_once_and_released_when_all_are_done() {
        let budget = QueueBudget::new(QueueLimits { per_trigger: 10 << 20, total: 10 << 20 });
        let trigger = budget.trigger();
        let targets = queued_targets(3);
        let event = big_event(100_000);
        enqueue(&trigger_id(), &event, &targets, &trigger, &TriggerStats::default());
        assert_eq!(trigger.held(), event_bytes(&event));
        assert_eq!(budget.held(), event_bytes(&event));
        let mut popped = Vec::new();
        for (_, queue) in &targets {
            popped.push(queue.pop().now_or_never().flatten().unwrap());
        }
        popped.truncate(1);
        assert_eq!(trigger.held(), event_bytes(&event), "held while one delivery is still in flight");
        drop(popped);
        assert_eq!(trigger.held(), 0);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn a_trigger_over_its_byte_limit_has_its_deliveries_dead_lettered_and_counted() {
        let event = big_event(100_000);
        let size = event_bytes(&event);
        let budget = QueueBudget::new(QueueLimits { per_trigger: 2 * size + size / 2, total: 100 * size });
        let trigger = budget.trigger();
        let targets = queued_targets(2);
        let stats = TriggerStats::default();
        for _ in 0..5 {
            enqueue(&trigger_id(), &event, &targets, &trigger, &stats);
        }
        assert_eq!(targets[0].1.len(), 2);
        assert_eq!(targets[1].1.len(), 2);
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.queue_byte_limited, 6, "three events refused, for each of two destinations");
        assert_eq!(snapshot.dead_lettered, 6);
        assert!(snapshot.last_error.unwrap().contains("queue byte limit: this trigger's queued deliveries"));
        assert_eq!(trigger.held(), 2 * size);
    }

    #[test]
    fn the_total_byte_limit_holds_while_shares_shrink_as_triggers_start() {
        let budget = QueueBudget::new(QueueLimits { per_trigger: 1000, total: 350 });
        let first = budget.trigger();
        let held: Vec<_> = (0..3).map(|_| first.charge(100).unwrap()).collect();
        let second = budget.trigger();
        assert!(
            matches!(second.charge(100), Err(QueueError::TotalBytes { held: 300, event: 100, limit: 350 })),
            "within the second trigger's share, but over the total"
        );
        drop(held);
        assert!(second.charge(100).is_ok(), "released bytes can be used again");
        assert_eq!(budget.held(), 0, "the refused charge held nothing; the accepted one was dropped");
    }

    #[test]
    fn triggers_filling_the_total_cannot_take_another_triggers_share() {
        let budget = QueueBudget::new(QueueLimits { per_trigger: 1000, total: 1000 });
        let hogs: Vec<_> = (0..3).map(|_| budget.trigger()).collect();
        let quiet = budget.trigger();
        let mut held = Vec::new();
        for hog in &hogs {
            while let Ok(charge) = hog.charge(50) {
                held.push(charge);
            }
        }
        assert_eq!(budget.held(), 750, "each of four triggers may hold a quarter");
        assert!(quiet.charge(250).is_ok());
    }

    #[test]
    fn a_popped_delivery_is_in_flight_until_acked() {
        let queue = MemoryQueue::new(4);
        queue.push(delivery()).unwrap();
        queue.push(delivery()).unwrap();
        let popped = queue.pop().now_or_never().flatten().unwrap();
        assert_eq!((queue.len(), queue.in_flight()), (1, 1));
        queue.ack(&popped.id);
        assert_eq!((queue.len(), queue.in_flight()), (1, 0));
    }

    #[test]
    fn an_attempt_span_says_retrying_until_no_attempt_follows() {
        let ok: Result<Receipt, DeliveryError> = Ok(Receipt { detail: None });
        assert_eq!(attempt_outcome(&ok, 1, 3), "delivered");
        assert_eq!(attempt_outcome(&Err(DeliveryError::transient("HTTP 503")), 2, 3), "retrying");
        assert_eq!(attempt_outcome(&Err(DeliveryError::transient("HTTP 503")), 3, 3), "failed");
        assert_eq!(attempt_outcome(&Err(DeliveryError::permanent("HTTP 400")), 1, 3), "failed");
    }

    #[test]
    fn room_counts_deliveries_taken_by_the_worker_and_ignores_dead_letter_destinations() {
        let budget = QueueBudget::new(QueueLimits::default()).trigger();
        let mut small = target(Scripted::new(vec![]), 1);
        small.flow.queue_size = 2;
        let queue: Arc<dyn DeliveryQueue> = Arc::new(MemoryQueue::new(2));
        let mut targets = vec![(small, queue.clone())];
        queue.push(delivery()).unwrap();
        assert_eq!(room(&targets, &budget, 100), Room::Now);
        let _taken = queue.pop().now_or_never().flatten().unwrap();
        queue.push(delivery()).unwrap();
        assert!(
            matches!(room(&targets, &budget, 100), Room::Later(reason) if reason.contains("queue is full (2 waiting)"))
        );
        assert!(matches!(queue.push(delivery()), Err(QueueError::Full(2))), "the one being sent counts");
        targets[0].0.flow.overflow = OverflowPolicy::DeadLetter;
        assert_eq!(room(&targets, &budget, 100), Room::Now, "nothing waits: enqueue dead-letters");
    }

    #[test]
    fn a_full_queue_refuses_instead_of_blocking() {
        let queue = MemoryQueue::new(1);
        queue.push(delivery()).unwrap();
        assert!(matches!(queue.push(delivery()), Err(QueueError::Full(1))));
        queue.close();
        assert!(matches!(queue.push(delivery()), Err(QueueError::Closed)));
    }
}
