//! [`EventLoop`]: registers handlers, feeds their watches into one keyed queue, waits until every
//! watch has listed its objects, then runs the workers until cancelled.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use backon::ExponentialBuilder;
use futures::FutureExt;
use ktrigger_core::Envelope;
use ktrigger_kube::hub::{Health, HubOptions, Subscription, Verdict};
use ktrigger_kube::{Cluster, IdentityPolicy};
use kube::Client;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::dispatch::{Dispatch, Outcome, Typed};
use crate::error::HandlerError;
use crate::handler::{Context, EventHandler};
use crate::metrics::{LoopMetrics, Metrics};
use crate::queue::{Added, Key, Limits, Queue, Retry};
use crate::watch::{Target, Watch, to_change};

/// The largest threadiness [`EventLoop::run`] accepts.
pub const MAX_THREADINESS: usize = 1024;

/// Keys a loop holds at once unless told otherwise ([`EventLoop::max_queued_keys`]).
const DEFAULT_MAX_KEYS: usize = 65_536;

/// How long in-progress callbacks may run on after the loop is cancelled, unless told otherwise.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// How long callbacks told to stop (after the grace) may take to return before they are aborted.
const ABANDON_WAIT: Duration = Duration::from_secs(1);

/// How often a watch that has not listed yet is looked at again, besides its health changes.
const SYNC_CHECK: Duration = Duration::from_millis(500);

/// Runs [`EventHandler`]s with a number of workers, like client-go's controllers.
///
/// - Every handler's changes go into one keyed queue: an object (per handler) is handled by at
///   most one worker at a time, and changes made while it waits are merged into one (the latest
///   state; an add stays an add; an update keeps the oldest previous state).
/// - A failed (or panicking) callback is retried after a per-object exponential backoff, and
///   dropped with an error log once its retries are used up.
/// - Workers start only once every handler's watch has listed the objects that exist; those
///   arrive first, as adds.
/// - The queue holds at most [`EventLoop::max_queued_keys`] objects; a change to an object not
///   already held is dropped beyond that, with an error log and in
///   `ktrigger_handler_dropped_total` (the object comes back with its next change).
/// - When cancelled, idle workers stop, and callbacks in progress may finish within
///   [`EventLoop::shutdown_grace`]; then their [`Context::cancellation`] fires, and those still
///   running a second later are aborted.
///
/// Watches come from the [`WatchHub`](ktrigger_kube::WatchHub) of the loop's
/// [`Cluster`]: a loop made with [`EventLoop::on_cluster`] shares them with the triggers and other
/// loops of that cluster. Watches are made as the client's own identity.
pub struct EventLoop {
    name: Arc<str>,
    cluster: Cluster,
    client: Client,
    handlers: Vec<Registered>,
    metrics: Metrics,
    max_keys: usize,
    backoff: ExponentialBuilder,
    grace: Duration,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let handlers: Vec<&str> = self.handlers.iter().map(|h| h.dispatch.name()).collect();
        f.debug_struct("EventLoop").field("name", &self.name).field("handlers", &handlers).finish()
    }
}

struct Registered {
    dispatch: Arc<dyn Dispatch>,
    target: Target,
}

/// One handler's source of changes: its events and its watch's health.
pub(crate) struct Feed {
    pub(crate) events: mpsc::Receiver<Envelope>,
    pub(crate) health: watch::Receiver<Health>,
    /// Keeps the watch open while the loop runs.
    pub(crate) subscription: Option<Subscription>,
}

impl EventLoop {
    /// A loop named `name` (in logs and metrics) watching through `client`, with watches of its
    /// own.
    pub fn new(name: impl Into<String>, client: Client) -> EventLoop {
        let cluster = Cluster::with_client(client.clone(), IdentityPolicy::local(), HubOptions::default(), Vec::new());
        EventLoop::make(name.into(), cluster, client)
    }

    /// A loop named `name` on `cluster`, sharing its watches with everything else on it.
    pub fn on_cluster(name: impl Into<String>, cluster: &Cluster) -> Result<EventLoop, HandlerError> {
        let name = name.into();
        match cluster.kube_client() {
            Some(client) => Ok(EventLoop::make(name, cluster.clone(), client)),
            None => Err(HandlerError::NoCluster {
                event_loop: name,
                reason: cluster.unavailable_reason().unwrap_or("no client").to_string(),
            }),
        }
    }

    fn make(name: String, cluster: Cluster, client: Client) -> EventLoop {
        EventLoop {
            name: name.into(),
            cluster,
            client,
            handlers: Vec::new(),
            metrics: Metrics::new(),
            max_keys: DEFAULT_MAX_KEYS,
            backoff: retry_schedule(Duration::from_millis(100), Duration::from_secs(300), 10),
            grace: DEFAULT_GRACE,
        }
    }

    /// Records the loop's queue depth, adds, retries, drops and processing times in `metrics`.
    pub fn metrics(mut self, metrics: &Metrics) -> Self {
        self.metrics = metrics.clone();
        self
    }

    /// How many objects the queue holds at once (at least 1; default 65,536).
    pub fn max_queued_keys(mut self, max: usize) -> Self {
        self.max_keys = max.max(1);
        self
    }

    /// The retry schedule of a failing object: `first`, doubling (with jitter) up to `max`, at
    /// most `retries` times; then the change is dropped. Default: 100 ms, 5 min, 10 retries.
    pub fn retry_backoff(mut self, first: Duration, max: Duration, retries: usize) -> Self {
        self.backoff = retry_schedule(first, max, retries);
        self
    }

    /// How long callbacks in progress may run on once the loop is cancelled (default 30 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The loop's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds `handler` for the objects of `watch`. Fails on a duplicate handler name or a label
    /// selector that does not parse.
    pub fn register<K, H>(&mut self, handler: H, watch: Watch<K>) -> Result<(), HandlerError>
    where
        K: DeserializeOwned + Send + Sync + 'static,
        H: EventHandler<K>,
    {
        let handler_name = handler.name().to_string();
        if self.handlers.iter().any(|h| h.dispatch.name() == handler_name) {
            return Err(HandlerError::DuplicateName { event_loop: self.name.to_string(), handler: handler_name });
        }
        let labels = watch.canonical_labels().map_err(|message| HandlerError::Selector {
            event_loop: self.name.to_string(),
            handler: handler_name.clone(),
            selector: watch.labels.clone().unwrap_or_default(),
            message,
        })?;
        let target = Target { resource: watch.resource, namespace: watch.namespace, labels };
        self.handlers.push(Registered { dispatch: Arc::new(Typed::<K, H>::new(handler)), target });
        Ok(())
    }

    /// Runs the handlers with `threadiness` workers until `cancel` fires, then lets callbacks in
    /// progress finish (within the shutdown grace) and returns. Fails when `threadiness` is not
    /// within 1..=[`MAX_THREADINESS`], or when a watch is refused or keeps failing before it has
    /// listed its objects (no worker has started then).
    pub async fn run(self, cancel: CancellationToken, threadiness: usize) -> Result<(), HandlerError> {
        if threadiness == 0 || threadiness > MAX_THREADINESS {
            return Err(HandlerError::Threadiness {
                event_loop: self.name.to_string(),
                threadiness,
                max: MAX_THREADINESS,
            });
        }
        let mut feeds = Vec::with_capacity(self.handlers.len());
        for registered in &self.handlers {
            let subscribed =
                registered.target.subscribe(self.cluster.hub(), &self.client, &self.name, registered.dispatch.name());
            let (subscription, events) = subscribed.map_err(|reason| self.watch_error(registered, reason))?;
            let health = subscription.health();
            feeds.push(Feed { events, health, subscription: Some(subscription) });
        }
        self.drive(feeds, cancel, threadiness).await
    }

    fn watch_error(&self, registered: &Registered, reason: String) -> HandlerError {
        HandlerError::Watch {
            event_loop: self.name.to_string(),
            handler: registered.dispatch.name().to_string(),
            resource: registered.target.describe(),
            reason,
        }
    }

    /// Feeds the queue from `feeds` (one per handler, in order), waits until all have synced,
    /// and runs the workers until `cancel`.
    pub(crate) async fn drive(
        self,
        feeds: Vec<Feed>,
        cancel: CancellationToken,
        threadiness: usize,
    ) -> Result<(), HandlerError> {
        let metrics = self.metrics.for_loop(&self.name);
        let queue = Queue::new(Limits { max_keys: self.max_keys, backoff: self.backoff }, metrics.clone());
        let mut feeders = JoinSet::new();
        let mut healths = Vec::with_capacity(feeds.len());
        let mut subscriptions = Vec::with_capacity(feeds.len());
        for (index, feed) in feeds.into_iter().enumerate() {
            healths.push(feed.health);
            subscriptions.push(feed.subscription);
            let handler = self.handlers.get(index).map_or("", |h| h.dispatch.name()).to_string();
            feeders.spawn(feed_queue(index, feed.events, queue.clone(), self.name.clone(), handler));
        }
        let synced = tokio::select! {
            () = cancel.cancelled() => Ok(false),
            synced = self.wait_synced(&mut healths) => synced.map(|()| true),
        };
        if !matches!(synced, Ok(true)) {
            feeders.abort_all();
            return synced.map(|_| ());
        }
        tracing::info!(event_loop = %self.name, handlers = self.handlers.len(), threadiness, "watches synced; starting workers");

        let abandon = CancellationToken::new();
        let ctx = Context::new(self.client.clone(), abandon.clone(), self.name.clone());
        let handlers: Arc<[Arc<dyn Dispatch>]> = self.handlers.iter().map(|h| h.dispatch.clone()).collect();
        let mut workers = JoinSet::new();
        for _ in 0..threadiness {
            let worker = Worker {
                queue: queue.clone(),
                handlers: handlers.clone(),
                ctx: ctx.clone(),
                metrics: metrics.clone(),
                timers: abandon.clone(),
            };
            workers.spawn(worker.run(cancel.clone()));
        }
        cancel.cancelled().await;
        queue.close();
        let finished = tokio::time::timeout(self.grace, join_all(&mut workers)).await;
        if finished.is_err() {
            tracing::warn!(
                event_loop = %self.name,
                running = workers.len(),
                grace = ?self.grace,
                "shutdown grace ran out; telling the callbacks still running to stop"
            );
        }
        abandon.cancel();
        if tokio::time::timeout(ABANDON_WAIT, join_all(&mut workers)).await.is_err() {
            tracing::warn!(event_loop = %self.name, running = workers.len(), "aborting callbacks that did not stop");
        }
        workers.abort_all();
        feeders.abort_all();
        drop(subscriptions);
        tracing::info!(event_loop = %self.name, "stopped");
        Ok(())
    }

    /// Waits until every watch has completed its first list; fails when one is refused, keeps
    /// failing for longer than the hub allows, or stops.
    async fn wait_synced(&self, healths: &mut [watch::Receiver<Health>]) -> Result<(), HandlerError> {
        let unhealthy_after = self.cluster.hub().options().unhealthy_after;
        for (index, health) in healths.iter_mut().enumerate() {
            loop {
                let reason = {
                    let now = health.borrow();
                    if now.synced {
                        break;
                    }
                    match now.verdict(Instant::now(), unhealthy_after) {
                        Verdict::Fine => None,
                        Verdict::Refused(reason) | Verdict::Unhealthy(reason) => Some(reason),
                    }
                };
                if let Some(reason) = reason {
                    return Err(self.feed_error(index, reason));
                }
                tokio::select! {
                    changed = health.changed() => if changed.is_err() {
                        return Err(self.feed_error(index, "the watch stopped before it listed its objects".into()));
                    },
                    () = tokio::time::sleep(SYNC_CHECK) => {}
                }
            }
        }
        Ok(())
    }

    fn feed_error(&self, index: usize, reason: String) -> HandlerError {
        match self.handlers.get(index) {
            Some(registered) => self.watch_error(registered, reason),
            None => HandlerError::Watch {
                event_loop: self.name.to_string(),
                handler: format!("#{index}"),
                resource: "unknown".into(),
                reason,
            },
        }
    }
}

async fn join_all(tasks: &mut JoinSet<()>) {
    while tasks.join_next().await.is_some() {}
}

fn retry_schedule(first: Duration, max: Duration, retries: usize) -> ExponentialBuilder {
    ExponentialBuilder::new().with_min_delay(first).with_max_delay(max).with_max_times(retries).with_jitter()
}

/// Moves one handler's changes from its watch into the queue.
async fn feed_queue(
    handler: usize,
    mut events: mpsc::Receiver<Envelope>,
    queue: Arc<Queue>,
    event_loop: Arc<str>,
    handler_name: String,
) {
    while let Some(envelope) = events.recv().await {
        let Some((key, change)) = to_change(handler, envelope.event) else {
            tracing::warn!(event_loop = %event_loop, handler = %handler_name, "ignored a change of an object without a name");
            continue;
        };
        match queue.add(key.clone(), change) {
            Added::New | Added::Merged => {}
            Added::Dropped => tracing::error!(
                event_loop = %event_loop,
                handler = %handler_name,
                key = %key,
                "queue full: change dropped (the object is handled again at its next change)"
            ),
            Added::Closed => return,
        }
    }
}

/// One worker: takes keys until the loop stops.
struct Worker {
    queue: Arc<Queue>,
    handlers: Arc<[Arc<dyn Dispatch>]>,
    ctx: Context,
    metrics: LoopMetrics,
    /// Cancelled when the loop has stopped: pending retry timers end.
    timers: CancellationToken,
}

impl Worker {
    async fn run(self, cancel: CancellationToken) {
        loop {
            let next = tokio::select! {
                biased;
                () = cancel.cancelled() => None,
                next = self.queue.next() => next,
            };
            let Some((key, change)) = next else { break };
            self.process(key, change).await;
        }
    }

    async fn process(&self, key: Key, change: crate::change::Change) {
        let Some(handler) = self.handlers.get(key.handler) else {
            self.queue.done(&key, change, true);
            return;
        };
        let started = Instant::now();
        let outcome = AssertUnwindSafe(handler.handle(&self.ctx, &key, &change)).catch_unwind().await;
        self.metrics.processing.observe(started.elapsed().as_secs_f64());
        let (event_loop, name, kind) = (self.ctx.loop_name(), handler.name(), change.kind());
        let failure = match outcome {
            Ok(Outcome::Done) => None,
            Ok(Outcome::Undecodable(error)) => {
                tracing::error!(event_loop, handler = name, %key, change = kind, %error, "object does not decode as the handler's type; dropped");
                None
            }
            Ok(Outcome::Failed(error)) => Some(error.to_string()),
            Err(_) => Some("the handler panicked".to_string()),
        };
        let succeeded = failure.is_none();
        match (self.queue.done(&key, change, succeeded), failure) {
            (Retry::After(delay, ticket), Some(error)) => {
                tracing::warn!(event_loop, handler = name, %key, change = kind, %error, retry_in = ?delay, "handler failed; retrying");
                let (queue, timers) = (self.queue.clone(), self.timers.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        () = timers.cancelled() => {}
                        () = tokio::time::sleep(delay) => queue.retry_due(&key, ticket),
                    }
                });
            }
            (Retry::GaveUp, Some(error)) => {
                tracing::error!(event_loop, handler = name, %key, change = kind, %error, "handler failed; retries used up, change dropped");
            }
            (_, Some(error)) => {
                tracing::warn!(event_loop, handler = name, %key, change = kind, %error, "handler failed; a newer change is queued");
            }
            (_, None) => {}
        }
    }
}
