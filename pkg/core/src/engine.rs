//! The supervisor: one isolated set of tasks per trigger (source, event processing, one worker
//! per destination), each with its own cancellation, panics caught, sources and event processing
//! restarted with backoff, and triggers replaced only when their spec hash changes.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use chrono::Utc;
use futures::FutureExt;
use ktrigger_api::{TriggerServiceSpec, TriggerStatus};
use serde_json::json;
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::bounded::off_runtime;
use crate::builder::EngineBuilder;
use crate::cel::limits::{Budget, Exceeded};
use crate::cel::{CelExpr, Vars};
use crate::credentials::CredentialPolicy;
use crate::delivery::{
    DeliveryQueue, QueueBudget, QueueLimits, Room, Target, TriggerBudget, enqueue, event_bytes, panic_message, room,
    run_worker,
};
use crate::event::{SharedEvent, TriggerId, stable_id};
use crate::prepare::{PreparedTrigger, TriggerProblem, prepare_service};
use crate::registry::{DeliveryRequest, Envelope, EventSink, Handled, Outcome, Registry, Source};
use crate::router::{Admission, DedupCounts, DedupLimits, RateLimit, Router, StoredDedup, bounded_key};
use crate::secrets::{ClusterSecrets, SecretReader};
use crate::state::memory::MemoryStore;
use crate::state::{Commit, StateStore, StoreError, trigger_prefix};
use crate::stats::{LatencySnapshot, StatsSnapshot, TriggerStats};
use crate::sync::sleep_until;
use crate::trace;

/// Where a trigger keeps its dedup entries, under its prefix in the store.
const DEDUP: &str = "dedup/";
/// Where a trigger keeps the event its debounce holds.
const DEBOUNCE: &str = "debounce";
/// Where a trigger's source keeps its position (see [`crate::state::SourceState`]).
const SOURCE: &str = "source/";

/// How long shutdown waits for halted workers to end.
const HALT_WAIT: Duration = Duration::from_secs(1);

/// How often a source waiting for room in a full delivery queue looks again.
const ROOM_CHECK: Duration = Duration::from_millis(5);

/// Events a source may hand over before it waits for its trigger.
const EVENT_BUFFER: usize = 256;
/// A source that ran this long without failing starts its next backoff from the beginning.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Evaluate everything but call no destination; print what would be sent instead.
    pub dry_run: bool,
    /// First and longest delay before a failed source is started again.
    pub source_backoff: (Duration, Duration),
    /// Which of this process's files and variables `{file}` and `{env}` references may read.
    pub credentials: CredentialPolicy,
    /// Bytes the delivery queues may hold, per trigger and in all.
    pub queue_limits: QueueLimits,
    /// Dedup keys the router keeps, per trigger and in all.
    pub dedup_limits: DedupLimits,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            dry_run: false,
            source_backoff: (Duration::from_secs(1), Duration::from_secs(60)),
            credentials: CredentialPolicy::default(),
            queue_limits: QueueLimits::default(),
            dedup_limits: DedupLimits::default(),
        }
    }
}

struct RunningTrigger {
    hash: u64,
    cancel: CancellationToken,
    stats: Arc<TriggerStats>,
    queues: Vec<Arc<dyn DeliveryQueue>>,
}

/// What applying a TriggerService did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Triggers started (new or changed), with a one-line summary each.
    pub started: Vec<(TriggerId, String)>,
    /// Triggers left running because their spec did not change.
    pub unchanged: Vec<TriggerId>,
    /// Triggers stopped because they were removed or became invalid.
    pub stopped: Vec<TriggerId>,
    /// Triggers that could not be loaded, with every problem.
    pub skipped: Vec<TriggerProblem>,
    /// Some Secret the TriggerService refers to could not be read: applying it again later may
    /// load triggers skipped for that reason.
    pub secrets_unreadable: bool,
}

/// What shutting down left behind.
#[derive(Debug, Default)]
pub struct ShutdownReport {
    /// Final counters of every trigger that was running.
    pub stats: Vec<(TriggerId, StatsSnapshot)>,
    /// Deliveries still queued or being delivered when the grace period ended, lost with the
    /// process (memory store).
    pub lost: usize,
    /// The same, kept in the state store for the next start.
    pub kept: usize,
}

/// One running trigger as seen from outside the engine (metrics).
#[derive(Clone)]
struct Observed {
    stats: Arc<TriggerStats>,
    queues: Vec<Arc<dyn DeliveryQueue>>,
    budget: Arc<TriggerBudget>,
    router: Arc<Router>,
}

/// A read-only view of the running triggers that other tasks can hold (e.g. a metrics endpoint)
/// while the engine itself is owned by one task.
#[derive(Clone, Default)]
pub struct EngineObserver(Arc<std::sync::Mutex<BTreeMap<TriggerId, Observed>>>);

/// Counters and queue depth of one running trigger.
#[derive(Debug, Clone)]
pub struct TriggerMetrics {
    /// The trigger.
    pub id: TriggerId,
    /// Its counters.
    pub stats: StatsSnapshot,
    /// Deliveries waiting in its destination queues.
    pub queued: usize,
    /// Estimated bytes its queued and in-flight deliveries hold.
    pub queued_bytes: u64,
    /// Its dedup keys.
    pub dedup: DedupCounts,
    /// Time from firing to accepted delivery.
    pub latency: LatencySnapshot,
}

impl EngineObserver {
    /// The counters and queue depth of every running trigger now.
    pub fn snapshot(&self) -> Vec<TriggerMetrics> {
        crate::sync::lock(&self.0)
            .iter()
            .map(|(id, observed)| TriggerMetrics {
                id: id.clone(),
                stats: observed.stats.snapshot(),
                queued: observed.queues.iter().map(|q| q.len()).sum(),
                queued_bytes: observed.budget.held(),
                dedup: observed.router.counts(id),
                latency: observed.stats.latency(),
            })
            .collect()
    }
}

/// Runs triggers. One engine per process; all triggers share its router.
pub struct Engine {
    registry: Arc<Registry>,
    secrets: Option<Arc<dyn SecretReader>>,
    store: Arc<dyn StateStore>,
    router: Arc<Router>,
    budget: Arc<QueueBudget>,
    options: EngineOptions,
    running: BTreeMap<TriggerId, RunningTrigger>,
    problems: BTreeMap<TriggerId, Vec<String>>,
    tasks: TaskTracker,
    /// Fired when the shutdown grace period is over: workers stop where they are.
    halt: CancellationToken,
    observer: EngineObserver,
}

impl Engine {
    /// Starts an engine: its types, store, Secret reader and limits.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// An engine that knows the types in `registry`.
    pub(crate) fn new(registry: Arc<Registry>, options: EngineOptions) -> Self {
        Engine {
            registry,
            secrets: None,
            store: Arc::new(MemoryStore),
            router: Arc::new(Router::with_limits(options.dedup_limits)),
            budget: QueueBudget::new(options.queue_limits),
            options,
            running: BTreeMap::new(),
            problems: BTreeMap::new(),
            tasks: TaskTracker::new(),
            halt: CancellationToken::new(),
            observer: EngineObserver::default(),
        }
    }

    /// Reads the Secrets that `secretKeyRef` properties name through `reader`. Without one, a
    /// trigger that names a Secret is skipped with the reason.
    pub(crate) fn with_secret_reader(self, reader: Arc<dyn SecretReader>) -> Self {
        Engine { secrets: Some(reader), ..self }
    }

    /// Keeps deliveries, dedup windows and source positions in `store`, so that they survive
    /// restarts. Without one, nothing survives.
    pub(crate) fn with_store(self, store: Arc<dyn StateStore>) -> Self {
        let mut router = Router::with_limits(self.options.dedup_limits);
        if store.durable() && !self.options.dry_run {
            router = router.persisting();
        }
        Engine { store, router: Arc::new(router), ..self }
    }

    /// Checks a spec without running anything or reading any Secret: the problems of every trigger.
    /// `{env}` and `{file}` references are read as the engine's credential policy says.
    pub fn check(&self, namespace: &str, service: &str, spec: &TriggerServiceSpec) -> Vec<TriggerProblem> {
        let secrets = ClusterSecrets::unchecked().with_credentials(self.options.credentials.clone());
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore);
        prepare_service(&self.registry, namespace, service, spec, true, &secrets, &store).1
    }

    /// Brings the running triggers of one TriggerService in line with `spec`: reads the Secrets
    /// it refers to, starts new and changed triggers, stops removed ones, and leaves unchanged
    /// ones (and their state) alone.
    pub async fn apply(&mut self, namespace: &str, service: &str, spec: &TriggerServiceSpec) -> ApplyReport {
        let secrets = match &self.secrets {
            Some(reader) => ClusterSecrets::read(reader.as_ref(), namespace, spec).await,
            None => ClusterSecrets::default(),
        }
        .with_credentials(self.options.credentials.clone());
        let store: Arc<dyn StateStore> = if self.options.dry_run { Arc::new(MemoryStore) } else { self.store.clone() };
        let (prepared, skipped) =
            prepare_service(&self.registry, namespace, service, spec, self.options.dry_run, &secrets, &store);
        let mut report = ApplyReport { secrets_unreadable: secrets.any_unreadable(), ..ApplyReport::default() };
        let mut wanted: Vec<TriggerId> = prepared.iter().map(|p| p.id.clone()).collect();
        wanted.extend(skipped.iter().map(|p| p.id.clone()));
        for id in self.service_triggers(namespace, service) {
            if !wanted.contains(&id) {
                self.stop(&id);
                self.forget(&id);
                report.stopped.push(id);
            }
        }
        for problem in &skipped {
            if self.running.contains_key(&problem.id) {
                self.stop(&problem.id);
                report.stopped.push(problem.id.clone());
            }
            let problems = problem.messages.join("; ");
            tracing::error!(trigger = %problem.id, problems, "skipped trigger {}: {problems}", problem.id);
            self.problems.insert(problem.id.clone(), problem.messages.clone());
        }
        for trigger in prepared {
            self.problems.remove(&trigger.id);
            if self.running.get(&trigger.id).is_some_and(|running| running.hash == trigger.hash) {
                report.unchanged.push(trigger.id);
                continue;
            }
            if self.running.contains_key(&trigger.id) {
                self.stop(&trigger.id);
            }
            let (id, summary) = (trigger.id.clone(), trigger.summary());
            if self.start(trigger).await {
                report.started.push((id, summary));
            }
        }
        report.skipped = skipped;
        report
    }

    /// Stops every trigger of a TriggerService and forgets its state.
    pub fn remove(&mut self, namespace: &str, service: &str) -> Vec<TriggerId> {
        let ids = self.service_triggers(namespace, service);
        for id in &ids {
            self.stop(id);
            self.forget(id);
        }
        self.problems.retain(|id, _| !(id.namespace == namespace && id.service == service));
        ids
    }

    /// The status entries of one TriggerService's triggers, invalid ones included.
    pub fn status(&self, namespace: &str, service: &str) -> Vec<TriggerStatus> {
        let mut statuses = Vec::new();
        for (id, running) in self.running.iter().filter(|(id, _)| id.namespace == namespace && id.service == service) {
            let mut status = running.stats.snapshot().to_status(&id.trigger);
            status.active_events = self.router.active_events(id);
            status.dedup_evicted = self.router.counts(id).evicted;
            statuses.push(status);
        }
        for (id, messages) in self.problems.iter().filter(|(id, _)| id.namespace == namespace && id.service == service)
        {
            statuses.push(TriggerStatus {
                name: id.trigger.clone(),
                ready: false,
                last_error: Some(messages.join("; ")),
                ..Default::default()
            });
        }
        statuses
    }

    /// The counters of every running trigger.
    pub fn snapshot(&self) -> Vec<(TriggerId, StatsSnapshot)> {
        self.running.iter().map(|(id, running)| (id.clone(), running.stats.snapshot())).collect()
    }

    /// Stops all sources, lets deliveries already queued finish for up to `grace`, and reports
    /// the final counters and how many deliveries were still waiting or being delivered when
    /// time ran out.
    pub async fn shutdown(mut self, grace: Duration) -> ShutdownReport {
        let running = std::mem::take(&mut self.running);
        for trigger in running.values() {
            trigger.cancel.cancel();
        }
        self.tasks.close();
        let drained = tokio::time::timeout(grace, self.tasks.wait()).await.is_ok();
        if !drained {
            self.halt.cancel();
        }
        let left: usize = if drained {
            0
        } else {
            running.values().flat_map(|t| &t.queues).map(|q| q.len().saturating_add(q.in_flight())).sum()
        };
        let (lost, kept) = if self.store.durable() && !self.options.dry_run { (0, left) } else { (left, 0) };
        if lost > 0 {
            tracing::error!(lost, "shutdown grace period over; deliveries still waiting or in flight are lost");
        }
        if kept > 0 {
            tracing::info!(kept, store = %self.store.describe(),
                "shutdown grace period over; deliveries still waiting or in flight are kept for the next start");
        }
        // Halted workers end at their next await; what they held stays in a durable store.
        let _ = tokio::time::timeout(HALT_WAIT, self.tasks.wait()).await;
        let stats = running.into_iter().map(|(id, trigger)| (id, trigger.stats.snapshot())).collect();
        ShutdownReport { stats, lost, kept }
    }

    fn service_triggers(&self, namespace: &str, service: &str) -> Vec<TriggerId> {
        self.running
            .keys()
            .chain(self.problems.keys())
            .filter(|id| id.namespace == namespace && id.service == service)
            .cloned()
            .collect()
    }

    /// A view of the running triggers for other tasks.
    pub fn observer(&self) -> EngineObserver {
        self.observer.clone()
    }

    /// Forgets the dedup state, pending debounce event and source position of a removed
    /// trigger. Its queued deliveries are still delivered by its workers.
    fn forget(&self, id: &TriggerId) {
        self.router.forget(id);
        if !self.options.dry_run {
            for kind in [DEDUP, DEBOUNCE, SOURCE] {
                drop(self.store.delete_prefix(&format!("{}{kind}", trigger_prefix(id))));
            }
        }
    }

    fn stop(&mut self, id: &TriggerId) {
        crate::sync::lock(&self.observer.0).remove(id);
        if let Some(running) = self.running.remove(id) {
            running.cancel.cancel();
        }
    }

    /// Starts a prepared trigger; false when its stored state cannot be read (the reason is then
    /// among the problems reported in its status).
    async fn start(&mut self, trigger: PreparedTrigger) -> bool {
        let stats = Arc::new(TriggerStats::default());
        let cancel = CancellationToken::new();
        let (sink, events) = EventSink::channel(EVENT_BUFFER);
        let mut queues: Vec<Arc<dyn DeliveryQueue>> = Vec::new();
        let dry_run = self.options.dry_run;
        let budget = self.budget.trigger();
        let store: Arc<dyn StateStore> = if dry_run { Arc::new(MemoryStore) } else { self.store.clone() };
        let prefix = trigger_prefix(&trigger.id);
        let mut opened = Vec::with_capacity(trigger.targets.len());
        for target in &trigger.targets {
            match store.open_queue(&format!("{prefix}queue/{}", target.label), target.flow.queue_size).await {
                Ok(queue) => opened.push(queue),
                Err(error) => {
                    let message =
                        format!("destinations: {}: cannot open its stored delivery queue: {error}", target.label);
                    tracing::error!(trigger = %trigger.id, reason = %message, "trigger not started");
                    self.problems.insert(trigger.id.clone(), vec![message]);
                    return false;
                }
            }
        }
        let restored = match restore_router_state(store.as_ref(), &self.router, &trigger.id).await {
            Ok(restored) => restored,
            Err(error) => {
                let message = format!("cannot read its stored dedup and debounce state: {error}");
                tracing::error!(trigger = %trigger.id, reason = %message, "trigger not started");
                self.problems.insert(trigger.id.clone(), vec![message]);
                return false;
            }
        };
        for (target, queue) in trigger.targets.iter().zip(opened) {
            let found = queue.len();
            if found > 0 {
                tracing::info!(trigger = %trigger.id, destination = %target.label, deliveries = found,
                    "continuing stored deliveries");
                stats.record_restored(found);
            }
            if !dry_run {
                let dead_letter = trigger.dead_letter.clone();
                let worker = run_worker(queue.clone(), target.clone(), dead_letter, stats.clone(), self.halt.clone());
                self.tasks.spawn(worker);
            }
            queues.push(queue);
        }
        let processor = Processor {
            id: trigger.id.clone(),
            filter: trigger.filter,
            dedup: trigger.dedup,
            rate_limit: trigger.rate_limit.and_then(|(per_minute, burst)| RateLimit::per_minute(per_minute, burst)),
            router: self.router.clone(),
            stats: stats.clone(),
            targets: trigger.targets.into_iter().zip(queues.clone()).collect(),
            cancel: cancel.clone(),
            budget: budget.clone(),
            dry_run,
            store: store.clone(),
            prefix,
            held: std::sync::Mutex::new(restored),
        };
        self.tasks.spawn(supervise_processor(
            Arc::new(processor),
            Arc::new(Mutex::new(events)),
            trigger.debounce,
            self.options.source_backoff,
        ));
        let supervisor = supervise_source(
            trigger.id.clone(),
            trigger.source,
            sink,
            cancel.clone(),
            stats.clone(),
            self.options.source_backoff,
        );
        self.tasks.spawn(supervisor);
        let observed = Observed { stats: stats.clone(), queues: queues.clone(), budget, router: self.router.clone() };
        crate::sync::lock(&self.observer.0).insert(trigger.id.clone(), observed);
        self.running.insert(trigger.id, RunningTrigger { hash: trigger.hash, cancel, stats, queues });
        true
    }
}

/// The waits between the restarts of a supervised task: exponential with jitter from `first` to
/// `longest`, starting over after a run of [`HEALTHY_RUN`]. The backoff is made (and boxed) at the
/// first restart: most tasks never restart, and every trigger has two waiting.
struct Restarts {
    first: Duration,
    longest: Duration,
    delays: Option<Box<ExponentialBackoff>>,
}

impl Restarts {
    fn new((first, longest): (Duration, Duration)) -> Self {
        Restarts { first, longest, delays: None }
    }

    /// The wait before the next start, after a run that lasted `ran`.
    fn next(&mut self, ran: Duration) -> Duration {
        if ran >= HEALTHY_RUN {
            self.delays = None;
        }
        let (first, longest) = (self.first, self.longest);
        let delays = self.delays.get_or_insert_with(|| {
            let backoff = ExponentialBuilder::default().with_min_delay(first).with_max_delay(longest).with_jitter();
            Box::new(backoff.without_max_times().build())
        });
        delays.next().unwrap_or(longest)
    }
}

/// Sleeps `wait` unless `cancel` fires first; true when it did. Boxed by its callers: the timer
/// takes room only while a restart waits.
async fn cancelled_within(cancel: &CancellationToken, wait: Duration) -> bool {
    tokio::select! {
        () = cancel.cancelled() => true,
        () = tokio::time::sleep(wait) => false,
    }
}

/// Runs a source until cancelled; restarts it with backoff when it fails, panics or stops. The
/// source runs in this task (a panic is caught here): one task per source, not two.
async fn supervise_source(
    id: TriggerId,
    source: Arc<dyn Source>,
    sink: EventSink,
    cancel: CancellationToken,
    stats: Arc<TriggerStats>,
    backoff: (Duration, Duration),
) {
    let mut restarts = Restarts::new(backoff);
    loop {
        stats.set_ready(true);
        let started = Instant::now();
        let result = AssertUnwindSafe(source.run(sink.clone(), cancel.clone())).catch_unwind().await;
        stats.set_ready(false);
        if cancel.is_cancelled() {
            return;
        }
        let reason = match result {
            Ok(Ok(())) => "source stopped unexpectedly".to_string(),
            Ok(Err(error)) => format!("source failed: {error}"),
            Err(panic) => format!("source panicked: {}", panic_message(&panic)),
        };
        let wait = restarts.next(started.elapsed());
        stats.record_restart(&reason);
        tracing::error!(trigger = %id, reason = %reason, restart_in = ?wait, "source stopped; restarting");
        if Box::pin(cancelled_within(&cancel, wait)).await {
            return;
        }
    }
}

/// Runs a trigger's event processing until its source is gone; restarts it with backoff when it
/// panics. The events channel and the queues outlive each run, so a restart loses at most the
/// event being processed and the one a debounce was holding.
async fn supervise_processor(
    processor: Arc<Processor>,
    events: Arc<Mutex<mpsc::Receiver<Envelope>>>,
    debounce: Option<Duration>,
    backoff: (Duration, Duration),
) {
    let mut restarts = Restarts::new(backoff);
    loop {
        let started = Instant::now();
        let run = AssertUnwindSafe(processor.clone().run(events.clone(), debounce)).catch_unwind();
        let reason = match run.await {
            Ok(()) => return,
            Err(panic) => format!("event processing panicked: {}", panic_message(&panic)),
        };
        let wait = restarts.next(started.elapsed());
        processor.stats.record_restart(&reason);
        tracing::error!(trigger = %processor.id, reason = %reason, restart_in = ?wait, "event processing stopped; restarting");
        Box::pin(tokio::time::sleep(wait)).await;
    }
}

struct Processor {
    id: TriggerId,
    /// Where dedup entries and the debounced event are kept.
    store: Arc<dyn StateStore>,
    /// The trigger's prefix in the store.
    prefix: String,
    /// The event a debounce held when the previous run stopped, taken by the first run.
    held: std::sync::Mutex<Option<HeldEvent>>,
    filter: Option<CelExpr>,
    dedup: Option<(CelExpr, Duration)>,
    rate_limit: Option<RateLimit>,
    router: Arc<Router>,
    stats: Arc<TriggerStats>,
    targets: Vec<(Target, Arc<dyn DeliveryQueue>)>,
    budget: Arc<TriggerBudget>,
    dry_run: bool,
    /// Fired when the trigger stops: an event waiting for room in a full queue is given up.
    cancel: CancellationToken,
}

impl Processor {
    /// Reads events until the source is gone, then closes the queues so workers drain and stop.
    /// Each event's source is told how it was handled once what it caused is stored.
    async fn run(self: Arc<Self>, events: Arc<Mutex<mpsc::Receiver<Envelope>>>, debounce: Option<Duration>) {
        let mut events = events.lock().await;
        let held = crate::sync::lock(&self.held).take();
        let mut pending: Option<(SharedEvent, Instant)> = held.map(|held| {
            let wait = (held.due - Utc::now()).to_std().unwrap_or_default();
            (Arc::new(held.event), Instant::now().checked_add(wait).unwrap_or_else(Instant::now))
        });
        loop {
            let deadline = pending.as_ref().map(|(_, at)| *at);
            // The work on an event runs in a future of its own, boxed: this loop waits, idle, in
            // every trigger's task, and stays as small as its two branches.
            tokio::select! {
                received = events.recv() => {
                    let Some(envelope) = received else { break };
                    Box::pin(self.handle(envelope, debounce, &mut pending)).await;
                }
                _ = sleep_until(deadline), if deadline.is_some() => {
                    if let Some((event, _)) = pending.take() {
                        Box::pin(self.fire_held(event)).await;
                    }
                }
            }
        }
        // A held event stays stored for the next run when the store keeps it; without one it
        // fires now rather than be lost.
        if let Some((event, _)) = pending.take()
            && !self.store.durable()
        {
            Box::pin(self.route(event, true)).await;
        }
        for (_, queue) in &self.targets {
            queue.close();
        }
    }

    /// Filters one received event, then routes it, or holds it while `debounce` is quiet
    /// (`pending` is the event held now); its source is told how it was handled.
    async fn handle(
        &self,
        envelope: Envelope,
        debounce: Option<Duration>,
        pending: &mut Option<(SharedEvent, Instant)>,
    ) {
        let event = envelope.event.clone();
        let span = trace::event_span(&self.id, &event);
        if let Err((outcome, reason)) = self.filter_step(&event).instrument(span.clone()).await {
            envelope.answer(Handled::Dropped(outcome, reason));
            return;
        }
        match debounce {
            None => {
                let (handled, commits) = self.route(event, envelope.can_wait).instrument(span).await;
                answer_when_stored(envelope, handled, commits);
            }
            Some(quiet) => {
                // Durations are bounded at load; a clock this close to its end fires now.
                let at = Instant::now().checked_add(quiet).unwrap_or_else(Instant::now);
                let commit = self.hold(&event, quiet);
                if let Some((replaced, _)) = pending.replace((event, at)) {
                    self.stats.record_filtered();
                    let reason = "debounced: a newer event arrived within the quiet period";
                    self.report(&replaced, reason);
                }
                answer_when_stored(envelope, Handled::Held, vec![commit]);
            }
        }
    }

    /// Routes the event a debounce held once its quiet period is over, and forgets it.
    async fn fire_held(&self, event: SharedEvent) {
        let span = trace::event_span(&self.id, &event);
        self.route(event, true).instrument(span).await;
        drop(self.store.delete(&format!("{}{DEBOUNCE}", self.prefix)));
    }

    /// Stores the event the debounce now holds, due `quiet` from now.
    fn hold(&self, event: &SharedEvent, quiet: Duration) -> Commit {
        if !self.store.durable() {
            return Commit::done();
        }
        let due = chrono::Duration::from_std(quiet).ok().and_then(|quiet| Utc::now().checked_add_signed(quiet));
        let held = HeldEventRef { event, due: due.unwrap_or_else(Utc::now) };
        match serde_json::to_vec(&held) {
            Ok(bytes) => self.store.put(&format!("{}{DEBOUNCE}", self.prefix), bytes),
            Err(error) => Commit::failed(StoreError::Invalid(error.to_string())),
        }
    }

    /// Stores the dedup entry of `key` as the router has it now, and forgets the keys the
    /// router forgot.
    fn persist_dedup(&self, key: &str) -> Vec<Commit> {
        if !self.store.durable() {
            return Vec::new();
        }
        let mut commits: Vec<Commit> = self
            .router
            .take_removed(&self.id)
            .into_iter()
            .map(|removed| self.store.delete(&format!("{}{DEDUP}{removed}", self.prefix)))
            .collect();
        if let Some(entry) = self.router.stored_entry(&self.id, key)
            && let Ok(bytes) = serde_json::to_vec(&entry)
        {
            commits.push(self.store.put(&format!("{}{DEDUP}{key}", self.prefix), bytes));
        }
        commits
    }

    /// Evaluates `expr` for `event` with `eval`: in place within a small budget, and when that
    /// is not enough, again from the start off the async runtime with the full budget.
    /// Evaluations have no side effects, so starting over changes nothing but where it runs.
    async fn evaluate<T: Send + 'static>(
        &self,
        expr: &CelExpr,
        event: &SharedEvent,
        eval: fn(&CelExpr, &Vars, Budget) -> Option<Result<T, String>>,
    ) -> Result<T, String> {
        let now = Utc::now();
        if let Some(done) = eval(expr, &Vars::for_event(event, &self.id.trigger, now), Budget::IN_PLACE) {
            return done;
        }
        let (expr, event, trigger) = (expr.clone(), event.clone(), self.id.trigger.clone());
        off_runtime(move || {
            let vars = Vars::for_event(&event, &trigger, now);
            eval(&expr, &vars, Budget::FULL).unwrap_or_else(|| Err(Exceeded::Cost.reason()))
        })
        .await
    }

    /// Counts the event and applies the filter; `Err` with what happened and why when it does
    /// not pass.
    async fn filter_step(&self, event: &SharedEvent) -> Result<(), (Outcome, String)> {
        self.stats.record_received();
        let Some(filter) = &self.filter else { return Ok(()) };
        let span = trace::filter_span();
        let result = self.evaluate(filter, event, CelExpr::eval_bool_within).instrument(span.clone()).await;
        span.record("matched", matches!(result, Ok(true)));
        drop(span);
        match result {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.stats.record_filtered();
                let reason = "filter returned false".to_string();
                self.report(event, &reason);
                Err((Outcome::FilteredOut, reason))
            }
            Err(reason) => {
                let reason = format!("filter could not be evaluated: {reason}");
                self.stats.record_filter_error(&reason);
                tracing::warn!(trigger = %self.id, event = %event.meta.id, reason = %reason, "event not matched");
                self.report(event, &reason);
                Err((Outcome::FilterError, reason))
            }
        }
    }

    /// Dedup and rate limit through the shared router, then hand the event to every destination
    /// (waiting for room in full queues when the source `can_wait`): how it was handled, and the
    /// writes to wait for before saying so.
    async fn route(&self, event: SharedEvent, can_wait: bool) -> (Handled, Vec<Commit>) {
        // Before dedup and rate limit, so that an event refused for want of room leaves no trace
        // there and fires when its sender tries again.
        if !self.dry_run
            && let Err(reason) = self.wait_for_room(&event, can_wait).await
        {
            return (Handled::NotStored(reason), Vec::new());
        }
        // Open from here to the decision, which is what its duration measures.
        let span = trace::router_span();
        let key = match &self.dedup {
            None => None,
            Some((expr, window)) => match self.evaluate(expr, &event, CelExpr::eval_string_within).await {
                Ok(key) => Some((bounded_key(key), *window)),
                Err(reason) => {
                    span.record("decision", "dedup-error");
                    let reason = format!("dedup key could not be evaluated: {reason}");
                    self.stats.record_filter_error(&reason);
                    tracing::warn!(trigger = %self.id, event = %event.meta.id, reason = %reason, "event not matched");
                    self.report(&event, &reason);
                    return (Handled::Dropped(Outcome::FilterError, reason), Vec::new());
                }
            },
        };
        let stored_key = key.as_ref().map(|(key, _)| key.clone());
        let admission = self.router.admit(&self.id, key, self.rate_limit.as_ref());
        span.record(
            "decision",
            match admission {
                Admission::Fire => "fire",
                Admission::Duplicate { .. } => "duplicate",
                Admission::RateLimited => "rate-limited",
            },
        );
        // Deliveries are children of the event, not of the decision.
        drop(span);
        let mut commits = match (&admission, &stored_key) {
            (Admission::Fire | Admission::Duplicate { .. }, Some(key)) => self.persist_dedup(key),
            _ => Vec::new(),
        };
        match admission {
            Admission::Fire => {}
            Admission::Duplicate { key } => {
                self.stats.record_filtered();
                let reason = format!("duplicate of firing key {key:?}");
                self.report(&event, &reason);
                return (Handled::Dropped(Outcome::Duplicate, reason), commits);
            }
            Admission::RateLimited => {
                self.stats.record_filtered();
                tracing::warn!(trigger = %self.id, event = %event.meta.id, "rate limit reached; event dropped");
                let reason = "rate limit reached".to_string();
                self.report(&event, &reason);
                return (Handled::Dropped(Outcome::RateLimited, reason), Vec::new());
            }
        }
        self.stats.record_fired();
        if self.dry_run {
            self.print_dry_run(&event);
            return (Handled::Fired, Vec::new());
        }
        let (queued, refused) = enqueue(&self.id, &event, &self.targets, &self.budget, &self.stats);
        commits.extend(queued);
        match refused {
            None => (Handled::Fired, commits),
            Some(refused) => (Handled::NotStored(refused), commits),
        }
    }

    /// Waits until the destinations with `overflow: backpressure` have room for `event`,
    /// looking again every [`ROOM_CHECK`]; `Err` with the reason at once when the source cannot
    /// wait, or when the trigger stops meanwhile.
    async fn wait_for_room(&self, event: &SharedEvent, can_wait: bool) -> Result<(), String> {
        let bytes = event_bytes(event);
        let mut logged = false;
        loop {
            let reason = match room(&self.targets, &self.budget, bytes) {
                Room::Now => return Ok(()),
                Room::Later(reason) => reason,
            };
            if !logged {
                self.stats.record_backpressured();
            }
            if !can_wait {
                tracing::debug!(trigger = %self.id, event = %event.meta.id, reason = %reason,
                    "delivery queue full; the sender is told to retry");
                return Err(reason);
            }
            if !logged {
                tracing::info!(trigger = %self.id, reason = %reason, "delivery queue full; the source waits for room");
                logged = true;
            }
            tokio::select! {
                () = self.cancel.cancelled() => return Err(format!("{reason}; the trigger stopped while waiting")),
                () = tokio::time::sleep(ROOM_CHECK) => {}
            }
        }
    }

    /// Says why an event did not fire: a debug line, and in dry-run a JSON line on stdout.
    fn report(&self, event: &SharedEvent, reason: &str) {
        tracing::debug!(trigger = %self.id, event = %event.meta.id, reason, "event dropped");
        if self.dry_run {
            let line = json!({
                "dryRun": true, "trigger": self.id.to_string(), "event": event.meta.id,
                "eventType": event.meta.event_type, "source": event.meta.source,
                "matched": false, "reason": reason,
            });
            println!("{line}");
        }
    }

    fn print_dry_run(&self, event: &SharedEvent) {
        for (target, _) in &self.targets {
            let id = stable_id(&[&self.id.to_string(), &target.label, &event.meta.id]);
            let request = DeliveryRequest { id: &id, trigger: &self.id, event, attempt: 1 };
            let payload = match target.destination.render(&request) {
                Ok(payload) => json!({"wouldSend": payload}),
                Err(error) => json!({"renderError": error.to_string()}),
            };
            let mut line = json!({
                "dryRun": true, "trigger": self.id.to_string(), "event": event.meta.id,
                "eventType": event.meta.event_type, "source": event.meta.source,
                "matched": true, "destination": target.label,
            });
            if let (Some(line), Some(payload)) = (line.as_object_mut(), payload.as_object()) {
                line.extend(payload.clone());
            }
            println!("{line}");
        }
    }
}

/// The event a debounce holds, as stored.
#[derive(serde::Deserialize)]
struct HeldEvent {
    event: crate::event::Event,
    due: chrono::DateTime<Utc>,
}

/// [`HeldEvent`] borrowing the live event.
#[derive(serde::Serialize)]
struct HeldEventRef<'a> {
    event: &'a crate::event::Event,
    due: chrono::DateTime<Utc>,
}

/// Takes back a trigger's stored dedup entries into `router` (forgetting expired ones in the
/// store) and returns the event its debounce held, if any.
async fn restore_router_state(
    store: &dyn StateStore,
    router: &Router,
    id: &TriggerId,
) -> Result<Option<HeldEvent>, StoreError> {
    if !store.durable() {
        return Ok(None);
    }
    let prefix = trigger_prefix(id);
    let dedup_prefix = format!("{prefix}{DEDUP}");
    let mut entries = Vec::new();
    for (key, bytes) in store.load(&dedup_prefix).await? {
        let Some(key) = key.strip_prefix(&dedup_prefix) else { continue };
        match serde_json::from_slice::<StoredDedup>(&bytes) {
            Ok(entry) => entries.push((key.to_string(), entry)),
            Err(error) => tracing::warn!(trigger = %id, key, %error, "a stored dedup entry cannot be read; ignored"),
        }
    }
    let restored = entries.len();
    for expired in router.restore(id, entries) {
        drop(store.delete(&format!("{dedup_prefix}{expired}")));
    }
    if restored > 0 {
        tracing::info!(trigger = %id, keys = restored, "dedup windows restored");
    }
    let debounce_key = format!("{prefix}{DEBOUNCE}");
    let held = store.load(&debounce_key).await?.into_iter().find(|(key, _)| *key == debounce_key);
    Ok(held.and_then(|(_, bytes)| match serde_json::from_slice::<HeldEvent>(&bytes) {
        Ok(held) => Some(held),
        Err(error) => {
            tracing::warn!(trigger = %id, %error, "the stored debounced event cannot be read; ignored");
            None
        }
    }))
}

/// Tells the event's source how it was handled once `commits` are durable; the processor goes
/// on meanwhile, so that writes of consecutive events are committed together.
fn answer_when_stored(envelope: Envelope, handled: Handled, commits: Vec<Commit>) {
    if envelope.handled.is_none() {
        return;
    }
    if commits.iter().all(|commit| commit.result_now().is_some()) {
        let failed = commits.iter().find_map(|commit| commit.result_now().and_then(Result::err));
        envelope.answer(failed.map_or(handled, |error| Handled::NotStored(error.to_string())));
        return;
    }
    tokio::spawn(async move {
        let handled = match Commit::wait_all(commits).await {
            Ok(()) => handled,
            Err(error) => Handled::NotStored(error.to_string()),
        };
        envelope.answer(handled);
    });
}
