//! The controller: keeps one engine's triggers in step with the TriggerService objects of a
//! cluster and writes their status back.
//!
//! Reconciling is driven by one watch per watched namespace (or one for all). A TriggerService is
//! (re)applied to the engine only when its generation changes; the engine itself restarts only
//! triggers whose spec changed. Status is computed from the engine's counters every second and
//! written only when it changed: at once when its state changed (conditions, generation, which
//! triggers run), and counters at most once per `status_interval`, so that busy triggers do not
//! churn etcd and wake every watcher of TriggerServices.
//! A TriggerService naming a Secret that could not be read is applied again on that tick, with
//! a delay that doubles up to [`SECRET_RETRY_MAX`], until every Secret it names is read; one whose
//! Secrets were read is applied again every `secret_refresh`, so that a rotated Secret restarts
//! the triggers that use it.
//!
//! With [`ControllerOptions::serve`], khook Hooks and kube-trigger TriggerServices are watched too
//! and reconciled the same way through their conversion ([`serve`]); every object also gets
//! khook's audit Events ([`audit`]).

pub mod audit;
pub mod metrics;
pub mod serve;
mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::ObjectReference;
use ktrigger_api::{TriggerService, TriggerServiceSpec, TriggerServiceStatus};
use ktrigger_core::{Engine, ShutdownReport, TriggerProblem, trigger_references};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::{ServiceCounts, ServiceGauges};
pub use serve::Compat;

pub use status::{READY, compute_status, state_changed};

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    /// The shortest time between two writes of a status whose counters alone changed.
    pub status_interval: Duration,
    /// How long queued deliveries may take to finish at shutdown.
    pub shutdown_grace: Duration,
    /// How often the Secrets a TriggerService names are read again; zero: only on changes.
    pub secret_refresh: Duration,
    /// Other kinds of objects reconciled through conversion (khook Hooks, kube-trigger
    /// TriggerServices); none by default.
    pub serve: Vec<Compat>,
    /// Where served Hooks call kagent; unset: the kagent destination's default.
    pub kagent_url: Option<String>,
    /// Where the counts of ready and invalid TriggerServices and triggers are kept for `/metrics`.
    pub gauges: Arc<ServiceGauges>,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            namespaces: Vec::new(),
            status_interval: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            secret_refresh: Duration::from_secs(600),
            serve: Vec::new(),
            kagent_url: None,
            gauges: Arc::default(),
        }
    }
}

type Key = (String, String);

/// Whether every TriggerService watch has listed its objects once; for `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// True once the controller has seen every TriggerService it watches.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Least time between two Kubernetes Events of the same reason about the same trigger.
const EVENT_INTERVAL: Duration = Duration::from_secs(60);
/// Longest note of a Kubernetes Event (the API server refuses longer ones).
const MAX_NOTE: usize = 1024;
/// Longest wait before a TriggerService whose Secrets could not be read is applied again.
pub const SECRET_RETRY_MAX: Duration = Duration::from_secs(300);

/// When to apply a TriggerService that names Secrets again, to read them anew.
#[derive(Debug)]
struct SecretRecheck {
    spec: TriggerServiceSpec,
    at: Instant,
    /// The delay of the last failed read, which the next failure doubles; zero after a success.
    failed_delay: Duration,
}

/// What the controller knows of one TriggerService.
#[derive(Debug, Default)]
struct Service {
    /// The watch stream that reports this object (one per watched namespace).
    stream: usize,
    uid: Option<String>,
    generation: Option<i64>,
    reference: ObjectReference,
    problems: Vec<TriggerProblem>,
    written: Option<TriggerServiceStatus>,
    /// When `written` was written.
    written_at: Option<Instant>,
    /// Per trigger, the dead-letter and restart counts already reported by Kubernetes Events.
    reported: BTreeMap<String, (u64, u64)>,
    /// Per trigger and reason, when the last Kubernetes Event was sent.
    last_event: BTreeMap<(String, &'static str), Instant>,
    /// Set while the TriggerService names Secrets.
    recheck: Option<SecretRecheck>,
    /// Set for an object served through conversion.
    served: Option<ServedObject>,
    /// khook's audit Events: what has been seen and told.
    audit: audit::AuditTrail,
}

/// The first delay before reading a Secret that could not be read again.
const SECRET_RETRY_FIRST: Duration = Duration::from_secs(5);

/// How often statuses are computed and a change of state is looked for.
const STATE_CHECK: Duration = Duration::from_secs(1);

/// Reconciles TriggerServices into `engine` until `cancel` fires, then drains the engine.
/// `readiness` turns true once every watch has listed its objects.
pub async fn run(
    client: Client,
    engine: Engine,
    options: ControllerOptions,
    readiness: Readiness,
    cancel: CancellationToken,
) -> ShutdownReport {
    let apis: Vec<Api<TriggerService>> = if options.namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        options.namespaces.iter().map(|ns| Api::namespaced(client.clone(), ns)).collect()
    };
    let native = apis.into_iter().map(|api| {
        watcher(api, watcher::Config::default())
            .default_backoff()
            .map(|e| e.map(|e| map_event(e, Watched::Native)))
            .boxed()
    });
    let served = options.serve.iter().flat_map(|compat| {
        let resource = compat.resource();
        let compat = *compat;
        let apis: Vec<Api<DynamicObject>> = if options.namespaces.is_empty() {
            vec![Api::all_with(client.clone(), &resource)]
        } else {
            options.namespaces.iter().map(|ns| Api::namespaced_with(client.clone(), ns, &resource)).collect()
        };
        apis.into_iter().map(move |api| {
            let watched = move |object| Watched::Served(compat, object);
            watcher(api, watcher::Config::default())
                .default_backoff()
                .map(move |e| e.map(|e| map_event(e, watched)))
                .boxed()
        })
    });
    let streams = native.chain(served).enumerate().map(|(index, stream)| stream.map(move |event| (index, event)));
    let mut events = stream::select_all(streams);
    let unsynced = (0..events.len()).collect();
    let recorder = Recorder::new(client.clone(), Reporter::from("ktrigger-controller"));
    let mut controller = Controller {
        client,
        status_interval: options.status_interval,
        secret_refresh: options.secret_refresh,
        gauges: options.gauges.clone(),
        engine,
        recorder,
        services: BTreeMap::new(),
        listing: BTreeMap::new(),
        unsynced,
        readiness,
        outbox: Vec::new(),
        kagent_url: options.kagent_url,
    };
    let mut tick = tokio::time::interval(STATE_CHECK.min(options.status_interval));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            next = events.next() => match next {
                Some((stream, Ok(event))) => {
                    controller.handle(stream, event).await;
                    controller.publish_events().await;
                }
                Some((_, Err(error))) => tracing::warn!(%error, "watch of TriggerServices (or served objects) failed; retrying with backoff"),
                None => break,
            },
            _ = tick.tick() => {
                controller.recheck_secrets().await;
                controller.write_statuses().await;
                controller.publish_events().await;
            }
        }
    }
    controller.write_statuses().await;
    controller.engine.shutdown(options.shutdown_grace).await
}

struct Controller {
    client: Client,
    status_interval: Duration,
    secret_refresh: Duration,
    gauges: Arc<ServiceGauges>,
    engine: Engine,
    recorder: Recorder,
    /// Kubernetes Events waiting to be published, with the object they are about.
    outbox: Vec<(ObjectReference, Event)>,
    services: BTreeMap<Key, Service>,
    /// Per watch stream, the objects seen since its (re)list began.
    listing: BTreeMap<usize, BTreeSet<Key>>,
    /// Watch streams that have not finished their first list yet.
    unsynced: BTreeSet<usize>,
    readiness: Readiness,
    kagent_url: Option<String>,
}

/// An object served through conversion: its kind, its name, and what could not be converted as
/// (trigger, message).
#[derive(Debug)]
struct ServedObject {
    compat: Compat,
    name: String,
    problems: Vec<(String, String)>,
}

/// An object the controller reconciles: a TriggerService, or an object served through conversion.
enum Watched {
    Native(TriggerService),
    Served(Compat, DynamicObject),
}

impl Controller {
    async fn handle(&mut self, stream: usize, event: watcher::Event<Watched>) {
        match event {
            watcher::Event::Init => {
                self.listing.insert(stream, BTreeSet::new());
            }
            watcher::Event::InitApply(object) => {
                let key = key_of(&object);
                self.listing.entry(stream).or_default().insert(key);
                self.apply(stream, &object).await;
            }
            watcher::Event::InitDone => {
                // Objects deleted while the watch was down are gone from the fresh list.
                let seen = self.listing.remove(&stream).unwrap_or_default();
                let gone: Vec<Key> = self
                    .services
                    .iter()
                    .filter(|(key, service)| service.stream == stream && !seen.contains(*key))
                    .map(|(key, _)| key.clone())
                    .collect();
                for key in gone {
                    self.remove(&key);
                }
                self.unsynced.remove(&stream);
                if self.unsynced.is_empty() {
                    self.readiness.0.store(true, Ordering::Relaxed);
                }
            }
            watcher::Event::Apply(object) => self.apply(stream, &object).await,
            watcher::Event::Delete(object) => self.remove(&key_of(&object)),
        }
    }

    async fn apply(&mut self, stream: usize, object: &Watched) {
        let key = key_of(object);
        let metadata = match object {
            Watched::Native(object) => &object.metadata,
            Watched::Served(_, object) => &object.metadata,
        };
        let generation = metadata.generation;
        let uid = metadata.uid.clone();
        let service = self.services.entry(key.clone()).or_default();
        service.stream = stream;
        if service.uid == uid && service.generation == generation && generation.is_some() {
            return;
        }
        service.uid = uid;
        service.generation = generation;
        service.recheck = None;
        let spec = match object {
            Watched::Native(object) => {
                service.reference = object.object_ref(&());
                object.spec.clone()
            }
            Watched::Served(compat, object) => {
                service.reference = object.object_ref(&compat.resource());
                let served = compat.convert(object, self.kagent_url.as_deref());
                if !served.problems.is_empty() {
                    let details: Vec<String> =
                        served.problems.iter().map(|(t, m)| format!("trigger {t}: {m}")).collect();
                    let note = format!("not converted: {}", details.join(" | "));
                    self.outbox.push((service.reference.clone(), warning("InvalidTrigger", "Convert", note)));
                }
                if !served.changes.is_empty() {
                    let event = Event {
                        type_: EventType::Normal,
                        reason: "ConvertedWithChanges".into(),
                        note: Some(truncate_note(served.changes.join(" | "))),
                        action: "Convert".into(),
                        secondary: None,
                    };
                    self.outbox.push((service.reference.clone(), event));
                }
                service.served =
                    Some(ServedObject { compat: *compat, name: object.name_any(), problems: served.problems });
                served.spec
            }
        };
        self.load(&key, &spec).await;
    }

    /// Applies `spec` to the engine and records what could not be loaded.
    async fn load(&mut self, key: &Key, spec: &TriggerServiceSpec) {
        let report = self.engine.apply(&key.0, &key.1, spec).await;
        for (id, summary) in &report.started {
            tracing::info!(trigger = %id, summary = %summary, "trigger started");
        }
        for id in &report.stopped {
            tracing::info!(trigger = %id, "trigger stopped");
        }
        let Some(service) = self.services.get_mut(key) else { return };
        let names_secrets = spec.triggers.iter().any(|t| !trigger_references(t).is_empty());
        service.recheck = if report.secrets_unreadable {
            let delay = match &service.recheck {
                Some(recheck) if !recheck.failed_delay.is_zero() => (recheck.failed_delay * 2).min(SECRET_RETRY_MAX),
                _ => self.status_interval.min(SECRET_RETRY_FIRST),
            };
            Some(SecretRecheck { spec: spec.clone(), at: Instant::now() + delay, failed_delay: delay })
        } else if names_secrets && !self.secret_refresh.is_zero() {
            let at = Instant::now() + self.secret_refresh;
            Some(SecretRecheck { spec: spec.clone(), at, failed_delay: Duration::ZERO })
        } else {
            None
        };
        // Only a new set of problems is worth an Event: retries that fail alike stay quiet.
        if !report.skipped.is_empty() && report.skipped != service.problems {
            let details: Vec<String> =
                report.skipped.iter().map(|p| format!("trigger {}: {}", p.id.trigger, p.messages.join("; "))).collect();
            self.outbox.push((service.reference.clone(), warning("InvalidTrigger", "Load", details.join(" | "))));
        }
        service.problems = report.skipped;
    }

    /// Applies again the TriggerServices whose Secrets are due to be read again.
    async fn recheck_secrets(&mut self) {
        let now = Instant::now();
        let due: Vec<(Key, TriggerServiceSpec)> = self
            .services
            .iter()
            .filter_map(|(key, service)| {
                service.recheck.as_ref().filter(|r| r.at <= now).map(|r| (key.clone(), r.spec.clone()))
            })
            .collect();
        for (key, spec) in due {
            tracing::debug!(namespace = %key.0, name = %key.1, "reading the TriggerService's Secrets again");
            self.load(&key, &spec).await;
        }
    }

    fn remove(&mut self, key: &Key) {
        if self.services.remove(key).is_some() {
            for id in self.engine.remove(&key.0, &key.1) {
                tracing::info!(trigger = %id, "trigger stopped: TriggerService deleted");
            }
        }
    }

    /// Publishes the waiting Kubernetes Events; a failure is logged, never retried in a loop.
    async fn publish_events(&mut self) {
        for (reference, event) in std::mem::take(&mut self.outbox) {
            if let Err(error) = self.recorder.publish(&event, &reference).await {
                tracing::warn!(reason = %event.reason, %error, "Kubernetes Event could not be published");
            }
        }
    }

    async fn write_statuses(&mut self) {
        let now = Utc::now();
        let mut counts = ServiceCounts::default();
        for ((namespace, name), service) in self.services.iter_mut() {
            let triggers = self.engine.status(namespace, name);
            report_failures(service, &triggers, &mut self.outbox);
            let mut problems = service.problems.clone();
            if let Some(served) = &service.served {
                problems.extend(served.problems.iter().map(|(trigger, message)| TriggerProblem {
                    id: ktrigger_core::TriggerId {
                        namespace: namespace.clone(),
                        service: name.clone(),
                        trigger: trigger.clone(),
                    },
                    messages: vec![message.clone()],
                }));
            }
            for event in service.audit.observe(&triggers, Instant::now(), EVENT_INTERVAL) {
                let type_ = if event.warning { EventType::Warning } else { EventType::Normal };
                let event = Event {
                    type_,
                    reason: event.reason.to_string(),
                    note: Some(truncate_note(event.note)),
                    action: event.action.to_string(),
                    secondary: None,
                };
                self.outbox.push((service.reference.clone(), event));
            }
            let status = compute_status(service.generation, triggers, &problems, service.written.as_ref(), now);
            count(&mut counts, &status, problems.len());
            if service.written.as_ref() == Some(&status) {
                continue;
            }
            let urgent = service.written.as_ref().is_none_or(|written| state_changed(written, &status));
            if !urgent && service.written_at.is_some_and(|at| at.elapsed() < self.status_interval) {
                continue;
            }
            let (value, object_name) = match &service.served {
                Some(served) => (served.compat.status(&status), served.name.as_str()),
                None => (json!(status), name.as_str()),
            };
            // Replace the whole status object: merge patches could not drop fields that went away.
            let patch: json_patch::Patch =
                match serde_json::from_value(json!([{"op": "add", "path": "/status", "value": value}])) {
                    Ok(patch) => patch,
                    Err(error) => {
                        tracing::error!(%error, "status could not be encoded");
                        continue;
                    }
                };
            let written = match &service.served {
                Some(served) => {
                    let resource = served.compat.resource();
                    let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, &resource);
                    api.patch_status(object_name, &PatchParams::default(), &Patch::<()>::Json(patch)).await.map(|_| ())
                }
                None => {
                    let api: Api<TriggerService> = Api::namespaced(self.client.clone(), namespace);
                    api.patch_status(object_name, &PatchParams::default(), &Patch::<()>::Json(patch)).await.map(|_| ())
                }
            };
            match written {
                Ok(_) => {
                    service.written = Some(status);
                    service.written_at = Some(Instant::now());
                }
                Err(kube::Error::Api(response)) if response.code == 404 => {}
                Err(error) => tracing::warn!(namespace, name, %error, "status could not be written; retrying later"),
            }
        }
        self.gauges.set(counts);
    }
}

/// Adds one TriggerService, with `invalid` triggers refused, to the counts.
fn count(counts: &mut ServiceCounts, status: &TriggerServiceStatus, invalid: usize) {
    let ready = status.conditions.iter().any(|c| c.type_ == READY && c.status == "True");
    if ready {
        counts.services_ready += 1;
    } else {
        counts.services_not_ready += 1;
    }
    let running = status.triggers.iter().filter(|t| t.ready).count();
    counts.triggers_ready += running;
    counts.triggers_invalid += invalid;
    counts.triggers_not_running += status.triggers.len().saturating_sub(running).saturating_sub(invalid);
}

/// Queues a Kubernetes Event for each trigger whose deliveries were dead-lettered or whose source
/// restarted since the last report, at most one per reason and trigger every [`EVENT_INTERVAL`].
fn report_failures(
    service: &mut Service,
    triggers: &[ktrigger_api::TriggerStatus],
    outbox: &mut Vec<(ObjectReference, Event)>,
) {
    let now = Instant::now();
    for trigger in triggers {
        let (dead, restarts) = service.reported.get(&trigger.name).copied().unwrap_or_default();
        let last_error = trigger.last_error.as_deref().unwrap_or("unknown");
        let mut candidates = Vec::new();
        if trigger.dead_lettered > dead {
            let note = format!(
                "trigger {}: {} delivery(ies) dead-lettered; last error: {last_error}",
                trigger.name,
                trigger.dead_lettered - dead
            );
            candidates.push(("DeliveryDeadLettered", "Deliver", note));
        }
        if trigger.restarts > restarts {
            let note = format!(
                "trigger {}: source restarted {} time(s); last error: {last_error}",
                trigger.name,
                trigger.restarts - restarts
            );
            candidates.push(("TriggerRestarted", "Restart", note));
        }
        let mut sent_dead = false;
        let mut sent_restart = false;
        for (reason, action, note) in candidates {
            let key = (trigger.name.clone(), reason);
            if service.last_event.get(&key).is_some_and(|at| now.duration_since(*at) < EVENT_INTERVAL) {
                continue;
            }
            service.last_event.insert(key, now);
            outbox.push((service.reference.clone(), warning(reason, action, note)));
            sent_dead |= reason == "DeliveryDeadLettered";
            sent_restart |= reason == "TriggerRestarted";
        }
        let reported = service.reported.entry(trigger.name.clone()).or_default();
        if sent_dead {
            reported.0 = trigger.dead_lettered;
        }
        if sent_restart {
            reported.1 = trigger.restarts;
        }
    }
}

fn warning(reason: &str, action: &str, note: String) -> Event {
    Event {
        type_: EventType::Warning,
        reason: reason.to_string(),
        note: Some(truncate_note(note)),
        action: action.to_string(),
        secondary: None,
    }
}

/// `note` cut to what the API server accepts.
fn truncate_note(mut note: String) -> String {
    if note.len() > MAX_NOTE {
        let mut cut = MAX_NOTE - 3;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    note
}

/// The namespace and the name the engine knows `object` by.
fn key_of(object: &Watched) -> Key {
    match object {
        Watched::Native(object) => (object.namespace().unwrap_or_default(), object.name_any()),
        Watched::Served(compat, object) => {
            (object.namespace().unwrap_or_default(), compat.engine_name(&object.name_any()))
        }
    }
}

/// `event` with its objects turned into `T`.
fn map_event<K, T>(event: watcher::Event<K>, to: impl Fn(K) -> T) -> watcher::Event<T> {
    match event {
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(object) => watcher::Event::InitApply(to(object)),
        watcher::Event::InitDone => watcher::Event::InitDone,
        watcher::Event::Apply(object) => watcher::Event::Apply(to(object)),
        watcher::Event::Delete(object) => watcher::Event::Delete(to(object)),
    }
}
