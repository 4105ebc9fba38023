//! A destination's worker: takes deliveries from its queue and sends up to `concurrency` at
//! once, one at a time per object under `ordering: perObject`, in batches when asked. A
//! delivery waiting for a retry or a slow receiver holds its own slot only; the deliveries of
//! its object wait behind it, those of other objects go ahead.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ktrigger_api::{DeliveryOrdering, DestinationSpec, OverflowPolicy, parse_duration};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ordering::{KeyedScheduler, order_key};
use super::{
    DEFAULT_QUEUE_SIZE, Delivery, DeliveryQueue, Outcome, Target, dead_letter_event, deliver_all_with_retries,
    deliver_with_retries,
};
use crate::stats::{DestinationOutcome, TriggerStats};
use crate::sync::sleep_until;

/// Default number of deliveries in flight per destination.
pub const DEFAULT_CONCURRENCY: usize = 16;
/// Default longest wait of a delivery for others to join its batch.
pub const DEFAULT_BATCH_DELAY: Duration = Duration::from_secs(1);

/// How a destination's deliveries flow: queue size, concurrency, ordering, overflow, batching.
#[derive(Debug, Clone, PartialEq)]
pub struct Flow {
    /// Deliveries the queue holds, those being sent included.
    pub queue_size: usize,
    /// Deliveries (or batches) in flight at once.
    pub concurrency: usize,
    /// Whether deliveries of one object keep their order.
    pub ordering: DeliveryOrdering,
    /// What a full queue does to new deliveries.
    pub overflow: OverflowPolicy,
    /// Several deliveries per request, when set.
    pub batch: Option<Batch>,
}

/// Batching of one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    /// Most deliveries in one request.
    pub max_events: usize,
    /// Longest a delivery waits for others to join it.
    pub max_delay: Duration,
}

impl Default for Flow {
    fn default() -> Self {
        Flow {
            queue_size: DEFAULT_QUEUE_SIZE,
            concurrency: DEFAULT_CONCURRENCY,
            ordering: DeliveryOrdering::None,
            overflow: OverflowPolicy::Backpressure,
            batch: None,
        }
    }
}

impl Flow {
    /// The flow a destination spec asks for; `ordering` defaults to `perObject` when the source
    /// reports changes of Kubernetes objects (`per_object_source`). The spec was validated already.
    pub fn from_spec(spec: &DestinationSpec, per_object_source: bool) -> Result<Self, String> {
        let default_ordering = if per_object_source { DeliveryOrdering::PerObject } else { DeliveryOrdering::None };
        let batch = match &spec.batch {
            None => None,
            Some(batch) => Some(Batch {
                max_events: batch.max_events.max(1) as usize,
                max_delay: batch.max_delay.as_deref().map(parse_duration).transpose()?.unwrap_or(DEFAULT_BATCH_DELAY),
            }),
        };
        Ok(Flow {
            queue_size: spec.queue_size.map_or(DEFAULT_QUEUE_SIZE, |size| size.max(1) as usize),
            concurrency: spec.concurrency.map_or(DEFAULT_CONCURRENCY, |n| n.max(1) as usize),
            ordering: spec.ordering.unwrap_or(default_ordering),
            overflow: spec.overflow.unwrap_or(OverflowPolicy::Backpressure),
            batch,
        })
    }
}

/// Runs one destination's worker until the queue is closed and everything taken from it is
/// done, or `halt` fires (deliveries interrupted then are not acked, so a durable queue keeps
/// them). Each delivery is sent with retries; what fails for good goes to the dead-letter target.
pub(crate) fn run_worker(
    queue: Arc<dyn DeliveryQueue>,
    target: Target,
    dead_letter: Option<Target>,
    stats: Arc<TriggerStats>,
    halt: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    // Shared with every send rather than held by the worker's loop and copied into each: the
    // loop waits, idle, in every destination's task, which keeps what its future holds.
    let flow = target.flow.clone();
    work(Arc::new(Sender { queue, target, dead_letter, stats }), flow, halt)
}

/// The loop of [`run_worker`].
async fn work(sender: Arc<Sender>, flow: Flow, halt: CancellationToken) {
    let concurrency = flow.concurrency.max(1);
    let per_request = flow.batch.map_or(1, |batch| batch.max_events.max(1));
    let mut scheduler: KeyedScheduler<Delivery> = KeyedScheduler::default();
    let mut sending: JoinSet<()> = JoinSet::new();
    let mut keys: HashMap<tokio::task::Id, Vec<Option<String>>> = HashMap::new();
    let mut exhausted = false;
    // When the deliveries ready now go as a batch although it is not full.
    let mut due: Option<Instant> = None;
    loop {
        while sending.len() < concurrency && scheduler.ready() > 0 {
            if let Some(batch) = flow.batch {
                let full = scheduler.ready() >= per_request;
                let late = due.is_some_and(|at| Instant::now() >= at);
                if !(full || late || exhausted) {
                    due.get_or_insert_with(|| Instant::now().checked_add(batch.max_delay).unwrap_or_else(Instant::now));
                    break;
                }
            }
            due = None;
            let mut taken = Vec::with_capacity(per_request.min(scheduler.ready()));
            let mut taken_keys = Vec::with_capacity(taken.capacity());
            while taken.len() < per_request {
                let Some((key, delivery)) = scheduler.take_ready() else { break };
                taken_keys.push(key);
                taken.push(delivery);
            }
            let handle = sending.spawn(send(sender.clone(), taken));
            keys.insert(handle.id(), taken_keys);
        }
        if exhausted && sending.is_empty() && scheduler.is_empty() {
            return;
        }
        tokio::select! {
            () = halt.cancelled() => return,
            popped = sender.queue.pop(), if !exhausted => match popped {
                Some(delivery) => {
                    let key = match flow.ordering {
                        DeliveryOrdering::PerObject => order_key(&delivery.event),
                        DeliveryOrdering::None => None,
                    };
                    scheduler.push(key, delivery);
                }
                None => exhausted = true,
            },
            Some(joined) = sending.join_next_with_id(), if !sending.is_empty() => {
                let id = match joined {
                    Ok((id, ())) => id,
                    Err(error) => error.id(),
                };
                for key in keys.remove(&id).unwrap_or_default() {
                    scheduler.done(key.as_deref());
                }
            }
            () = sleep_until(due), if due.is_some() => {}
        }
    }
}

/// What every send of one destination's worker uses.
struct Sender {
    queue: Arc<dyn DeliveryQueue>,
    target: Target,
    dead_letter: Option<Target>,
    stats: Arc<TriggerStats>,
}

/// Sends deliveries (one, or a batch) with retries, dead-letters them when that fails, and acks.
async fn send(sender: Arc<Sender>, deliveries: Vec<Delivery>) {
    let Sender { queue, target, dead_letter, stats } = &*sender;
    let record = |delivery: &Delivery, attempts, next| queue.record_attempt(delivery, attempts, next);
    let outcome = deliver_all_with_retries(target, &deliveries, stats, record).await;
    for delivery in &deliveries {
        if let Outcome::DeadLettered { attempts, reason } = &outcome {
            stats.record_dead_lettered();
            stats.record_destination(&target.label, DestinationOutcome::DeadLettered);
            tracing::error!(trigger = %delivery.trigger, destination = %target.label, delivery = %delivery.id,
                attempts, reason = %reason, "delivery dead-lettered");
            if let Some(dead_letter) = dead_letter {
                send_dead_letter(dead_letter, delivery, &target.label, *attempts, reason, stats).await;
            }
        }
        queue.ack(&delivery.id);
    }
}

async fn send_dead_letter(
    dead_letter: &Target,
    delivery: &Delivery,
    label: &str,
    attempts: u32,
    reason: &str,
    stats: &TriggerStats,
) {
    let event = Arc::new(dead_letter_event(delivery, label, attempts, reason));
    let letter = Delivery {
        id: format!("{}-dead-letter", delivery.id),
        trigger: delivery.trigger.clone(),
        event,
        fired_at: delivery.fired_at,
        attempts: 0,
        not_before: None,
        charge: None,
        span: delivery.span.clone(),
    };
    if let Outcome::DeadLettered { reason, .. } = deliver_with_retries(dead_letter, &letter, stats, |_, _| {}).await {
        tracing::error!(trigger = %delivery.trigger, destination = %dead_letter.label, delivery = %letter.id,
            reason = %reason, "dead-letter delivery failed too");
    }
}
