//! The controller: keeps one engine's triggers in step with the TriggerService objects of a
//! cluster and writes their status back.
//!
//! Reconciling is driven by one watch per watched namespace (or one for all). A TriggerService is
//! (re)applied to the engine only when its generation changes; the engine itself restarts only
//! triggers whose spec changed. Status is computed from the engine's counters and written on a
//! fixed tick, only for objects whose status changed: never more than once per tick per object.

pub mod metrics;
mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use futures::{StreamExt, stream};
use ktrigger_api::{TriggerService, TriggerServiceStatus};
use ktrigger_core::engine::{Engine, ShutdownReport};
use ktrigger_core::prepare::TriggerProblem;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

pub use status::{READY, compute_status};

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    /// How often changed statuses are written.
    pub status_interval: Duration,
    /// How long queued deliveries may take to finish at shutdown.
    pub shutdown_grace: Duration,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            namespaces: Vec::new(),
            status_interval: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(30),
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

/// What the controller knows of one TriggerService.
#[derive(Debug, Default)]
struct Service {
    uid: Option<String>,
    generation: Option<i64>,
    problems: Vec<TriggerProblem>,
    written: Option<TriggerServiceStatus>,
}

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
    let streams = apis.into_iter().enumerate().map(|(index, api)| {
        watcher(api, watcher::Config::default()).default_backoff().map(move |event| (index, event)).boxed()
    });
    let mut events = stream::select_all(streams);
    let unsynced = (0..events.len()).collect();
    let mut controller =
        Controller { client, engine, services: BTreeMap::new(), listing: BTreeMap::new(), unsynced, readiness };
    let mut tick = tokio::time::interval(options.status_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            next = events.next() => match next {
                Some((stream, Ok(event))) => controller.handle(stream, event),
                Some((_, Err(error))) => tracing::warn!(%error, "TriggerService watch failed; retrying with backoff"),
                None => break,
            },
            _ = tick.tick() => controller.write_statuses().await,
        }
    }
    controller.write_statuses().await;
    controller.engine.shutdown(options.shutdown_grace).await
}

struct Controller {
    client: Client,
    engine: Engine,
    services: BTreeMap<Key, Service>,
    /// Per watch stream, the objects seen since its (re)list began.
    listing: BTreeMap<usize, BTreeSet<Key>>,
    /// Watch streams that have not finished their first list yet.
    unsynced: BTreeSet<usize>,
    readiness: Readiness,
}

impl Controller {
    fn handle(&mut self, stream: usize, event: watcher::Event<TriggerService>) {
        match event {
            watcher::Event::Init => {
                self.listing.insert(stream, BTreeSet::new());
            }
            watcher::Event::InitApply(object) => {
                let key = key_of(&object);
                self.listing.entry(stream).or_default().insert(key);
                self.apply(&object);
            }
            watcher::Event::InitDone => {
                // Objects deleted while the watch was down are gone from the fresh list.
                let seen = self.listing.remove(&stream).unwrap_or_default();
                let gone: Vec<Key> = self.services.keys().filter(|k| !seen.contains(*k)).cloned().collect();
                for key in gone {
                    self.remove(&key);
                }
                self.unsynced.remove(&stream);
                if self.unsynced.is_empty() {
                    self.readiness.0.store(true, Ordering::Relaxed);
                }
            }
            watcher::Event::Apply(object) => self.apply(&object),
            watcher::Event::Delete(object) => self.remove(&key_of(&object)),
        }
    }

    fn apply(&mut self, object: &TriggerService) {
        let key = key_of(object);
        let generation = object.metadata.generation;
        let uid = object.metadata.uid.clone();
        let service = self.services.entry(key.clone()).or_default();
        if service.uid == uid && service.generation == generation && generation.is_some() {
            return;
        }
        let report = self.engine.apply(&key.0, &key.1, &object.spec);
        for (id, summary) in &report.started {
            tracing::info!(trigger = %id, summary = %summary, "trigger started");
        }
        for id in &report.stopped {
            tracing::info!(trigger = %id, "trigger stopped");
        }
        service.uid = uid;
        service.generation = generation;
        service.problems = report.skipped;
    }

    fn remove(&mut self, key: &Key) {
        if self.services.remove(key).is_some() {
            for id in self.engine.remove(&key.0, &key.1) {
                tracing::info!(trigger = %id, "trigger stopped: TriggerService deleted");
            }
        }
    }

    async fn write_statuses(&mut self) {
        let now = Utc::now();
        for ((namespace, name), service) in self.services.iter_mut() {
            let triggers = self.engine.status(namespace, name);
            let status = compute_status(service.generation, triggers, &service.problems, service.written.as_ref(), now);
            if service.written.as_ref() == Some(&status) {
                continue;
            }
            let api: Api<TriggerService> = Api::namespaced(self.client.clone(), namespace);
            // Replace the whole status object: merge patches could not drop fields that went away.
            let patch: json_patch::Patch =
                match serde_json::from_value(json!([{"op": "add", "path": "/status", "value": status}])) {
                    Ok(patch) => patch,
                    Err(error) => {
                        tracing::error!(%error, "status could not be encoded");
                        continue;
                    }
                };
            match api.patch_status(name, &PatchParams::default(), &Patch::<()>::Json(patch)).await {
                Ok(_) => service.written = Some(status),
                Err(kube::Error::Api(response)) if response.code == 404 => {}
                Err(error) => tracing::warn!(namespace, name, %error, "status could not be written; retrying later"),
            }
        }
    }
}

fn key_of(object: &TriggerService) -> Key {
    (object.namespace().unwrap_or_default(), object.name_any())
}
