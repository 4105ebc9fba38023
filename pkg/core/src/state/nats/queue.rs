//! A delivery queue on JetStream.
//!
//! All queues share the work-queue stream `<prefix>-queues`; queue `name` publishes to
//! `<prefix>.q.<digest of name>` and reads through the durable pull consumer
//! `<prefix>-q-<digest>`, so another replica opening the same name continues it. One stream
//! rather than one per queue: the server keeps one set of files however many triggers run, and
//! removing a queue is a purge of its subject.
//!
//! A fetched delivery stays unacknowledged while it waits here or is being delivered, with its
//! ack deadline pushed back regularly ("in progress"); the worker acks it once delivered or
//! dead-lettered, and only then does the stream forget it. Should this process die, JetStream
//! hands the delivery out again once `ack_wait` has passed without news. JetStream's own
//! redelivery limit is not used: the worker dead-letters after the destination's attempts,
//! which are kept in the KV bucket while a delivery waits for a retry, so that backoff continues
//! after a failover instead of starting over.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, Consumer, pull};
use async_nats::{HeaderMap, Subject, header};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{Shared, keys, read_latest, unavailable};
use crate::delivery::{Delivery, DeliveryQueue, QueueError};
use crate::event::{Event, TriggerId};
use crate::state::{Commit, SCHEMA_VERSION, StoreError};
use crate::sync::lock;

/// Deliveries fetched ahead of the worker; fetching resumes when half are gone.
const BATCH: usize = 64;
/// How long one fetch waits on the server for deliveries to arrive.
const FETCH_WAIT: Duration = Duration::from_secs(5);
/// Pause after a failed fetch (server unreachable), so that the loop does not spin.
const FETCH_RETRY: Duration = Duration::from_millis(500);
/// Subject under the queues' stream where deliveries that cannot be read are moved aside.
const UNREADABLE: &str = "unreadable";

/// A delivery as stored in the stream.
#[derive(Serialize)]
struct StoredRef<'a> {
    schema: u32,
    id: &'a str,
    trigger: &'a TriggerId,
    event: &'a Event,
}

#[derive(Deserialize)]
struct Stored {
    schema: u32,
    id: String,
    trigger: TriggerId,
    event: Event,
}

/// The attempts of a delivery waiting for a retry, kept in the KV bucket.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Attempts {
    attempts: u32,
    next: DateTime<Utc>,
}

/// A fetched delivery: its stream sequence and the subject its acks go to (the latest, should
/// JetStream have handed it out again).
struct Held {
    delivery: Delivery,
    sequence: u64,
    reply: Subject,
}

struct Inner {
    shared: Arc<Shared>,
    name: String,
    subject: String,
    token: String,
    capacity: usize,
    /// Deliveries waiting: stored and not popped. Counted here as they come and go, and set
    /// from the consumer's figures now and then.
    waiting: AtomicUsize,
    /// Bumped by every push, pop and ack, so that figures read from the server while one
    /// happened are not taken.
    changes: AtomicU64,
    /// Acks sent and not yet confirmed by the server.
    acking: AtomicUsize,
    closed: CancellationToken,
    fetched: Mutex<VecDeque<Held>>,
    popped: Mutex<HashMap<u64, (String, Subject)>>,
    /// Woken when a delivery was fetched.
    ready: Notify,
    /// Woken when the worker took a delivery, so that fetching may resume.
    taken: Notify,
    /// Attempts of deliveries that failed before, by delivery id.
    attempts: Mutex<HashMap<String, Attempts>>,
}

/// A delivery queue on JetStream; see the module documentation.
pub struct JetStreamQueue {
    inner: Arc<Inner>,
    _stop: DropGuard,
}

impl JetStreamQueue {
    /// Opens (creating if needed) queue `name` with what it stored.
    pub(super) async fn open(shared: Arc<Shared>, name: &str, capacity: usize) -> Result<Self, StoreError> {
        let token = keys::queue_token(name);
        let subject = format!("{}.q.{token}", shared.prefix);
        let durable = format!("{}-q-{token}", shared.prefix);
        let mut consumer: Consumer<pull::Config> = shared
            .queues
            .get_or_create_consumer(
                &durable,
                pull::Config {
                    durable_name: Some(durable.clone()),
                    description: Some(name.chars().take(256).collect()),
                    filter_subject: subject.clone(),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: shared.ack_wait,
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                },
            )
            .await
            .map_err(|error| unavailable(format!("queue {name}: consumer {durable}: {error}")))?;
        let info = consumer.info().await.map_err(|error| unavailable(format!("queue {name}: {error}")))?;
        let waiting = usize::try_from(info.num_pending).unwrap_or(usize::MAX).saturating_add(info.num_ack_pending);
        // The consumer's own ack wait: one created earlier with another --state-ack-wait keeps it.
        let ack_wait = info.config.ack_wait;
        let attempts = load_attempts(&shared, &token).await?;
        let stop = CancellationToken::new();
        let inner = Arc::new(Inner {
            shared,
            name: name.to_string(),
            subject,
            token,
            capacity,
            waiting: AtomicUsize::new(waiting),
            changes: AtomicU64::new(0),
            acking: AtomicUsize::new(0),
            closed: CancellationToken::new(),
            fetched: Mutex::default(),
            popped: Mutex::default(),
            ready: Notify::new(),
            taken: Notify::new(),
            attempts: Mutex::new(attempts),
        });
        tokio::spawn(fetch(inner.clone(), consumer.clone(), stop.clone()));
        tokio::spawn(keep_in_progress(inner.clone(), consumer, ack_wait, stop.clone()));
        Ok(JetStreamQueue { inner, _stop: stop.drop_guard() })
    }
}

async fn load_attempts(shared: &Shared, token: &str) -> Result<HashMap<String, Attempts>, StoreError> {
    let stem = format!("{}{}", shared.kv_subject, keys::attempts_of(token));
    let entries = read_latest(&shared.state, format!("{stem}>")).await?;
    let mut attempts = HashMap::new();
    for (subject, value, _) in entries {
        let id = subject.strip_prefix(&stem).and_then(keys::attempt_id);
        if let (Some(id), Ok(recorded)) = (id, serde_json::from_slice::<Attempts>(&value)) {
            attempts.insert(id, recorded);
        }
    }
    Ok(attempts)
}

/// Removes queue `name`, what waits in it and the attempts it kept; how many deliveries.
pub(super) async fn remove(shared: &Shared, name: &str) -> Result<usize, StoreError> {
    let token = keys::queue_token(name);
    let durable = format!("{}-q-{token}", shared.prefix);
    // Absent already is fine: a queue opened by nobody has no consumer.
    let _ = shared.queues.delete_consumer(&durable).await;
    let purged = shared
        .queues
        .purge()
        .filter(format!("{}.q.{token}", shared.prefix))
        .await
        .map_err(|error| unavailable(format!("removing queue {name}: {error}")))?;
    let attempts = format!("{}{}>", shared.kv_subject, keys::attempts_of(&token));
    shared
        .state
        .purge()
        .filter(attempts)
        .await
        .map_err(|error| unavailable(format!("removing queue {name}: {error}")))?;
    Ok(usize::try_from(purged.purged).unwrap_or(usize::MAX))
}

/// Fetches deliveries ahead of the worker, at most [`BATCH`] at a time.
async fn fetch(inner: Arc<Inner>, consumer: Consumer<pull::Config>, stop: CancellationToken) {
    loop {
        loop {
            let taken = inner.taken.notified();
            if lock(&inner.fetched).len() < BATCH / 2 {
                break;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = inner.closed.cancelled() => return,
                _ = taken => {}
            }
        }
        let want = BATCH.saturating_sub(lock(&inner.fetched).len()).max(1);
        let deadline = tokio::time::Instant::now() + FETCH_WAIT + Duration::from_secs(1);
        let batch = consumer.batch().max_messages(want).expires(FETCH_WAIT).messages().await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(error) => {
                tracing::debug!(queue = %inner.name, %error, "fetching deliveries from NATS failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = inner.closed.cancelled() => return,
                    _ = tokio::time::sleep(FETCH_RETRY) => continue,
                }
            }
        };
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                _ = inner.closed.cancelled() => return,
                next = tokio::time::timeout_at(deadline, batch.next()) => next,
            };
            match next {
                Ok(Some(Ok(message))) => inner.receive(message).await,
                Ok(Some(Err(error))) => {
                    tracing::debug!(queue = %inner.name, %error, "fetching deliveries from NATS failed; retrying");
                    tokio::time::sleep(FETCH_RETRY).await;
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
}

/// Tells JetStream, more often than its ack wait, that fetched deliveries are still being
/// worked on, and sets the waiting count from the consumer's figures.
async fn keep_in_progress(
    inner: Arc<Inner>,
    mut consumer: Consumer<pull::Config>,
    ack_wait: Duration,
    stop: CancellationToken,
) {
    let every = (ack_wait / 3).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let mut replies: Vec<Subject> = lock(&inner.fetched).iter().map(|held| held.reply.clone()).collect();
        replies.extend(lock(&inner.popped).values().map(|(_, reply)| reply.clone()));
        for reply in replies {
            let _ = inner.shared.client.publish(reply, Bytes::from_static(b"+WPI")).await;
        }
        let changes = inner.changes.load(Ordering::Acquire);
        if let Ok(info) = consumer.info().await {
            let stored = usize::try_from(info.num_pending).unwrap_or(usize::MAX).saturating_add(info.num_ack_pending);
            let popped = lock(&inner.popped).len();
            let quiet = inner.acking.load(Ordering::Acquire) == 0 && inner.changes.load(Ordering::Acquire) == changes;
            if quiet {
                inner.waiting.store(stored.saturating_sub(popped), Ordering::Release);
            }
        }
    }
}

impl Inner {
    /// Takes a fetched message in: a new delivery, or one handed out again that is already here.
    async fn receive(&self, message: async_nats::jetstream::Message) {
        let Ok(info) = message.info() else { return };
        let sequence = info.stream_sequence;
        let Some(reply) = message.reply.clone() else { return };
        if let Some((_, held)) = lock(&self.popped).get_mut(&sequence) {
            *held = reply;
            return;
        }
        if let Some(held) = lock(&self.fetched).iter_mut().find(|held| held.sequence == sequence) {
            held.reply = reply;
            return;
        }
        let stored =
            serde_json::from_slice::<Stored>(&message.payload).map_err(|error| error.to_string()).and_then(|stored| {
                if stored.schema == SCHEMA_VERSION {
                    Ok(stored)
                } else {
                    Err(format!("schema {} (this version reads {SCHEMA_VERSION})", stored.schema))
                }
            });
        let stored = match stored {
            Ok(stored) => stored,
            Err(reason) => return self.move_aside(&message, &reason).await,
        };
        let recorded = lock(&self.attempts).get(&stored.id).copied();
        let delivery = Delivery {
            id: stored.id,
            trigger: stored.trigger,
            event: Arc::new(stored.event),
            fired_at: std::time::Instant::now(),
            attempts: recorded.map_or(0, |recorded| recorded.attempts),
            not_before: recorded.map(|recorded| recorded.next),
            charge: None,
            span: tracing::Span::none(),
        };
        lock(&self.fetched).push_back(Held { delivery, sequence, reply });
        self.ready.notify_one();
    }

    /// Moves a delivery this version cannot read to `<prefix>.q.unreadable`, where it stays for
    /// an operator to look at, and takes it off the queue.
    async fn move_aside(&self, message: &async_nats::jetstream::Message, reason: &str) {
        let aside = format!("{}.q.{UNREADABLE}", self.shared.prefix);
        tracing::error!(queue = %self.name, reason, subject = %aside, "stored delivery cannot be read; moved aside");
        let published = async { self.shared.js.publish(aside, message.payload.clone()).await?.await }.await;
        if published.is_ok() {
            let _ = message.ack_with(async_nats::jetstream::AckKind::Term).await;
            self.waiting.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).ok();
        }
    }
}

#[async_trait]
impl DeliveryQueue for JetStreamQueue {
    fn push(&self, delivery: Delivery) -> Result<Commit, QueueError> {
        let inner = &self.inner;
        if inner.closed.is_cancelled() {
            return Err(QueueError::Closed);
        }
        let held = inner.waiting.load(Ordering::Acquire).saturating_add(lock(&inner.popped).len());
        if held >= inner.capacity {
            return Err(QueueError::Full(held));
        }
        let stored =
            StoredRef { schema: SCHEMA_VERSION, id: &delivery.id, trigger: &delivery.trigger, event: &delivery.event };
        let payload = match serde_json::to_vec(&stored) {
            Ok(payload) => payload,
            Err(error) => return Ok(Commit::failed(StoreError::Invalid(error.to_string()))),
        };
        inner.waiting.fetch_add(1, Ordering::AcqRel);
        inner.changes.fetch_add(1, Ordering::AcqRel);
        let mut headers = HeaderMap::new();
        // JetStream drops a second copy of the same delivery within its duplicate window.
        headers.insert(header::NATS_MESSAGE_ID, delivery.id.as_str());
        let failed = {
            let inner = inner.clone();
            move || {
                inner.waiting.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).ok();
                inner.changes.fetch_add(1, Ordering::AcqRel);
            }
        };
        Ok(inner.shared.publish(inner.subject.clone(), headers, payload.into(), Box::new(failed)))
    }

    async fn pop(&self) -> Option<Delivery> {
        let inner = &self.inner;
        loop {
            let ready = inner.ready.notified();
            let next = lock(&inner.fetched).pop_front();
            if let Some(held) = next {
                lock(&inner.popped).insert(held.sequence, (held.delivery.id.clone(), held.reply));
                inner.waiting.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).ok();
                inner.changes.fetch_add(1, Ordering::AcqRel);
                inner.taken.notify_one();
                return Some(held.delivery);
            }
            if inner.closed.is_cancelled() {
                return None;
            }
            tokio::select! {
                _ = ready => {}
                _ = inner.closed.cancelled() => {}
            }
        }
    }

    fn record_attempt(&self, delivery: &Delivery, attempts: u32, next: DateTime<Utc>) {
        let inner = &self.inner;
        let recorded = Attempts { attempts, next };
        lock(&inner.attempts).insert(delivery.id.clone(), recorded);
        let Ok(value) = serde_json::to_vec(&recorded) else { return };
        let subject = format!("{}{}", inner.shared.kv_subject, keys::attempt_key(&inner.token, &delivery.id));
        let commit = inner.shared.publish(subject, HeaderMap::new(), value.into(), Box::new(|| {}));
        let (queue, id) = (inner.name.clone(), delivery.id.clone());
        tokio::spawn(async move {
            if let Err(error) = commit.wait().await {
                tracing::warn!(queue = %queue, delivery = %id, %error,
                    "the attempt count was not stored; after a restart the delivery's backoff starts over");
            }
        });
    }

    fn ack(&self, id: &str) {
        let inner = self.inner.clone();
        let held = {
            let mut popped = lock(&inner.popped);
            let sequence = popped.iter().find(|(_, (held, _))| held == id).map(|(sequence, _)| *sequence);
            sequence.and_then(|sequence| popped.remove(&sequence))
        };
        let Some((_, reply)) = held else { return };
        let had_attempts = lock(&inner.attempts).remove(id).is_some();
        let id = id.to_string();
        inner.acking.fetch_add(1, Ordering::AcqRel);
        inner.changes.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            // Asked rather than told: the server confirms, so the ack is not lost in a buffer.
            if let Err(error) = inner.shared.client.request(reply, Bytes::from_static(b"+ACK")).await {
                tracing::warn!(queue = %inner.name, delivery = %id, %error,
                    "the delivery's ack was not confirmed; it may be delivered again, with the same id");
            }
            inner.acking.fetch_sub(1, Ordering::AcqRel);
            if had_attempts {
                let subject = format!("{}{}", inner.shared.kv_subject, keys::attempt_key(&inner.token, &id));
                let _ = inner.shared.state.purge().filter(subject).await;
            }
        });
    }

    fn close(&self) {
        self.inner.closed.cancel();
    }

    fn len(&self) -> usize {
        self.inner.waiting.load(Ordering::Acquire)
    }

    fn in_flight(&self) -> usize {
        lock(&self.inner.popped).len()
    }
}
