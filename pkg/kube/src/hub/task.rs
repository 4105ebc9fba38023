//! The task around one watch: kube-runtime's watcher stream, subscribers joining and leaving,
//! what the watch remembers of each object, and its health.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::api::DynamicObject;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Client};
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::catch_up::Durable;
use super::fanout::NO_LABELS;
use super::{
    Change, ChangeKind, Command, Entry, Health, Subscriber, WatchKey, lock, occurrences, resource_version, uid_of,
};
use crate::identity::Identity;
use crate::position::Stored;
use crate::selector::{LabelInterner, ObjectSelector, StoredLabels, labels_of};

/// Subscriptions and unsubscriptions taken from the queue at once, so that the catch-ups of
/// triggers that subscribed while the watch was busy share one list.
const MAX_JOINS_AT_ONCE: usize = 4096;

/// Tells, from the requests of one watch, which of them restart it.
///
/// kube-runtime's watcher lists, then watches from the list's resourceVersion. It lists again
/// after 410 Gone or a failed list, and sends a new watch request when a stream ended or a watch
/// request failed; of these only the re-list shows in its events. So every list after the first
/// one and every watch request that does not directly follow a list is a restart. Pages of a
/// list (with a `continue` token) belong to the list.
#[derive(Debug, Default)]
struct RestartDetector {
    listed: bool,
    after_list: bool,
}

impl RestartDetector {
    /// Whether the list or watch request with this query string restarts the watch.
    fn restarts(&mut self, query: &str) -> bool {
        let (mut watch, mut page) = (false, false);
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "watch" => watch = value == "true" || value == "1",
                "continue" => page = !value.is_empty(),
                _ => {}
            }
        }
        if watch {
            !std::mem::take(&mut self.after_list)
        } else if page {
            false
        } else {
            self.after_list = true;
            std::mem::replace(&mut self.listed, true)
        }
    }
}

/// A client that sends through `client` and counts the requests that restart the watch of `key`.
fn restart_counting(client: Client, key: Arc<WatchKey>, restarts: Arc<AtomicU64>) -> Client {
    let namespace = client.default_namespace().to_string();
    let detector = Arc::new(Mutex::new(RestartDetector::default()));
    let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
        if lock(&detector).restarts(request.uri().query().unwrap_or_default()) {
            let total = restarts.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::debug!(watch = %key, watch_restarts = total, "watch restarting");
        }
        let client = client.clone();
        async move { client.send(request).await }
    });
    Client::new(service, namespace)
}

pub(super) fn start_watch(client: Client, key: WatchKey, restarts: Arc<AtomicU64>) -> Entry {
    // One key for the task, its restart counter and the watch's subscriptions.
    let key = Arc::new(key);
    let (commands, receiver) = mpsc::unbounded_channel();
    let (health_tx, health) = watch::channel(Health::default());
    let cancel = CancellationToken::new();
    let api_for = |client: Client| -> Api<DynamicObject> {
        match &key.namespace {
            Some(ns) => Api::namespaced_with(client, ns, &key.resource),
            None => Api::all_with(client, &key.resource),
        }
    };
    let watched = api_for(restart_counting(client.clone(), key.clone(), restarts));
    let api = api_for(client);
    let task = WatchTask {
        key: key.clone(),
        watched,
        api,
        subscribers: Vec::new(),
        known: HashMap::new(),
        labels: LabelInterner::default(),
        keep_old: false,
        synced: false,
        listing: None,
        pending_replays: Vec::new(),
        pending_catch_ups: Vec::new(),
        health: health_tx,
    };
    tokio::spawn(task.run(receiver, cancel.clone()));
    Entry { key, commands, health, subscribers: 0, cancel }
}

/// What the watch remembers of one object.
pub(super) struct Known {
    pub(super) name: Box<str>,
    pub(super) namespace: Option<Box<str>>,
    pub(super) resource_version: Box<str>,
    pub(super) occurrences: u64,
    pub(super) labels: Option<Arc<StoredLabels>>,
    pub(super) last: Option<Arc<Value>>,
}

impl Known {
    /// Whether `selector` selects the object in this state.
    pub(super) fn selected_by(&self, selector: &ObjectSelector) -> bool {
        let labels = self.labels.as_deref().unwrap_or(&NO_LABELS);
        selector.matches_parts(labels, &self.name, self.namespace.as_deref().unwrap_or_default())
    }

    /// The index entry of the object in this state, without its last state.
    pub(super) fn stored(&self) -> Stored {
        Stored {
            resource_version: self.resource_version.to_string(),
            name: self.name.to_string(),
            namespace: self.namespace.as_deref().map(str::to_string),
            occurrences: self.occurrences,
            object: None,
        }
    }
}

/// Where a subscriber with `replayExisting` stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Replay {
    /// Nothing to replay (not asked, or done).
    Done,
    /// Receives the objects of the first list as it runs.
    Live,
    /// Joined while the first list was running: served by a list of its own when it ends.
    Pending,
}

pub(super) struct Member {
    pub(super) id: u64,
    pub(super) subscriber: Subscriber,
    pub(super) replay: Replay,
    pub(super) durable: Option<Durable>,
}

pub(super) struct WatchTask {
    pub(super) key: Arc<WatchKey>,
    /// What the watcher lists and watches through: its restarts are counted.
    pub(super) watched: Api<DynamicObject>,
    /// What replays list through.
    pub(super) api: Api<DynamicObject>,
    pub(super) subscribers: Vec<Member>,
    pub(super) known: HashMap<String, Known>,
    /// The labels of the known objects.
    pub(super) labels: LabelInterner,
    pub(super) keep_old: bool,
    /// The first list completed.
    pub(super) synced: bool,
    /// The uids seen by the list in progress.
    pub(super) listing: Option<HashSet<String>>,
    /// Subscribers waiting for a replay list.
    pub(super) pending_replays: Vec<u64>,
    /// Subscribers with a stored index waiting for the watch to sync to catch up.
    pub(super) pending_catch_ups: Vec<u64>,
    pub(super) health: watch::Sender<Health>,
}

impl WatchTask {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>, cancel: CancellationToken) {
        let mut config = watcher::Config::default().page_size(super::list::LIST_PAGE);
        if !self.key.fields.is_empty() {
            config = config.fields(&self.key.fields);
        }
        let mut stream = watcher(self.watched.clone(), config).default_backoff().boxed();
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                command = commands.recv() => match command {
                    Some(command) => {
                        // Triggers that subscribed meanwhile (while a list ran) join together:
                        // their catch-ups share one list.
                        self.command(command);
                        for _ in 0..MAX_JOINS_AT_ONCE {
                            match commands.try_recv() {
                                Ok(command) => self.command(command),
                                Err(_) => break,
                            }
                        }
                        self.serve_joined().await;
                    }
                    None => break,
                },
                item = stream.next() => match item {
                    Some(Ok(event)) => self.on_event(event).await,
                    Some(Err(error)) => self.on_error(error),
                    None => break,
                },
            }
        }
        tracing::debug!(watch = %self.key, "watch task stopped");
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Join(id, joining) => self.join(id, joining.0, joining.1),
            Command::Leave(id) => self.leave(id),
        }
    }

    fn join(&mut self, id: u64, subscriber: Subscriber, durable: Option<Durable>) {
        // A subscriber with an index has its replay made by its catch-up.
        let replay = match (subscriber.replay_existing && durable.is_none(), self.synced, self.listing.is_some()) {
            (false, _, _) => Replay::Done,
            (true, false, false) => Replay::Live,
            (true, _, _) => Replay::Pending,
        };
        let catch_up = durable.is_some();
        self.subscribers.push(Member { id, subscriber, replay, durable });
        self.update_keep_old();
        if catch_up {
            self.pending_catch_ups.push(id);
        }
        if replay == Replay::Pending {
            self.pending_replays.push(id);
        }
    }

    /// Once the watch has synced (and is not re-listing), catches up and replays for the
    /// subscribers that joined.
    async fn serve_joined(&mut self) {
        if self.synced && self.listing.is_none() {
            self.serve_catch_ups().await;
            self.serve_replays().await;
        }
    }

    fn leave(&mut self, id: u64) {
        self.subscribers.retain(|m| m.id != id);
        self.pending_replays.retain(|p| *p != id);
        self.pending_catch_ups.retain(|p| *p != id);
        self.update_keep_old();
    }

    fn update_keep_old(&mut self) {
        let keep = self.subscribers.iter().any(|m| m.subscriber.needs_old);
        if self.keep_old && !keep {
            for known in self.known.values_mut() {
                known.last = None;
            }
        }
        self.keep_old = keep;
    }

    fn on_error(&mut self, error: watcher::Error) {
        let (message, refused) = describe_error(&error, &self.key);
        if message.is_empty() {
            return;
        }
        let now = Instant::now();
        let first = self.health.borrow().broken_since.is_none();
        let changed = self.health.borrow().last_error.as_deref() != Some(message.as_str());
        self.health.send_modify(|h| {
            h.broken_since.get_or_insert(now);
            h.last_error_at = Some(now);
            h.last_error = Some(message.clone());
            h.refused = refused;
        });
        if first || changed {
            let triggers = self.trigger_names();
            tracing::warn!(watch = %self.key, triggers = %triggers, error = %message, "watch failed; retrying with backoff");
        }
    }

    fn recovered(&mut self) {
        if self.health.borrow().broken_since.is_some() {
            tracing::info!(watch = %self.key, "watch works again");
            self.health.send_modify(|h| {
                h.broken_since = None;
                h.last_error_at = None;
                h.last_error = None;
                h.refused = false;
            });
        }
    }

    fn trigger_names(&self) -> String {
        let names: Vec<String> = self.subscribers.iter().map(|m| m.subscriber.trigger.to_string()).collect();
        names.join(", ")
    }

    async fn on_event(&mut self, event: watcher::Event<DynamicObject>) {
        self.recovered();
        match event {
            watcher::Event::Init => {
                if self.synced {
                    tracing::info!(watch = %self.key, "re-listing (the watch position expired)");
                }
                self.listing = Some(HashSet::new());
            }
            watcher::Event::InitApply(object) => {
                let object = self.to_value(object);
                let uid = uid_of(&object);
                if let Some(listing) = &mut self.listing {
                    listing.insert(uid.clone());
                }
                if self.synced {
                    self.apply(uid, object).await;
                } else {
                    // A first list that failed half-way and started over lists objects again.
                    let again = self.known.get(&uid).is_some_and(|k| *k.resource_version == *resource_version(&object));
                    let previous = self.remember(uid, &object);
                    self.labels.release(previous);
                    let live: Vec<u64> =
                        self.subscribers.iter().filter(|m| m.replay == Replay::Live).map(|m| m.id).collect();
                    if !again && !live.is_empty() {
                        self.dispatch(Change::new(ChangeKind::Create, object), Some(&live)).await;
                    }
                }
            }
            watcher::Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                if self.synced {
                    let gone: Vec<String> = self.known.keys().filter(|uid| !listed.contains(*uid)).cloned().collect();
                    for uid in gone {
                        if let Some(known) = self.known.remove(&uid) {
                            let object = self.stub(&uid, &known);
                            let labels = known.labels.clone();
                            let mut change = Change::new(ChangeKind::Delete, object);
                            change.old_occurrences = Some(known.occurrences);
                            change.old_resource_version = Some(known.resource_version);
                            change.old_labels = known.labels;
                            self.dispatch(change, None).await;
                            self.labels.release(labels);
                        }
                    }
                } else {
                    // Objects of an abandoned first list that are gone now were never reported.
                    let gone: Vec<String> = self.known.keys().filter(|uid| !listed.contains(*uid)).cloned().collect();
                    for uid in gone {
                        let labels = self.known.remove(&uid).and_then(|known| known.labels);
                        self.labels.release(labels);
                    }
                    tracing::info!(watch = %self.key, objects = self.known.len(), "watch synced");
                }
                self.synced = true;
                self.health.send_modify(|h| h.synced = true);
                for member in &mut self.subscribers {
                    if member.replay == Replay::Live {
                        member.replay = Replay::Done;
                    }
                }
                self.serve_catch_ups().await;
                self.serve_replays().await;
            }
            watcher::Event::Apply(object) => {
                let object = self.to_value(object);
                let uid = uid_of(&object);
                self.apply(uid, object).await;
            }
            watcher::Event::Delete(object) => {
                let object = self.to_value(object);
                let uid = uid_of(&object);
                let known = self.known.remove(&uid);
                let mut change = Change::new(ChangeKind::Delete, object);
                let mut labels = None;
                if let Some(known) = known {
                    change.old_occurrences = Some(known.occurrences);
                    change.old_resource_version = Some(known.resource_version);
                    change.old = known.last;
                    labels = known.labels.clone();
                    change.old_labels = known.labels;
                }
                self.dispatch(change, None).await;
                self.labels.release(labels);
            }
        }
    }

    /// A create or an update, told apart by what the watch remembers; an object seen again at
    /// the same resourceVersion (a resumed or re-listed watch) is not reported twice.
    async fn apply(&mut self, uid: String, object: Value) {
        let change = match self.known.get(&uid) {
            Some(known) if *known.resource_version == *resource_version(&object) => return,
            Some(known) => {
                let mut change = Change::new(ChangeKind::Update, object);
                change.old = known.last.clone();
                change.old_occurrences = Some(known.occurrences);
                change.old_resource_version = Some(known.resource_version.clone());
                change.old_labels = known.labels.clone();
                change
            }
            None => Change::new(ChangeKind::Create, object),
        };
        let previous = self.remember(uid, &change.object);
        self.dispatch(change, None).await;
        self.labels.release(previous);
    }

    /// Remembers `object` as the state of `uid`; returns the labels of the state it replaces, to
    /// be released once the change is dispatched.
    fn remember(&mut self, uid: String, object: &Value) -> Option<Arc<StoredLabels>> {
        let metadata = &object["metadata"];
        let previous = self.known.get(&uid).and_then(|known| known.labels.clone());
        let known = Known {
            name: metadata["name"].as_str().unwrap_or_default().into(),
            namespace: metadata["namespace"].as_str().map(Into::into),
            resource_version: resource_version(object).into(),
            occurrences: occurrences(object),
            labels: self.labels.intern(labels_of(object), previous.as_ref()),
            last: self.keep_old.then(|| Arc::new(object.clone())),
        };
        self.known.insert(uid, known);
        previous
    }

    /// The identity of an object deleted while the watch was not looking.
    fn stub(&self, uid: &str, known: &Known) -> Value {
        if let Some(last) = &known.last {
            return (**last).clone();
        }
        self.identity_object(uid, &known.name, known.namespace.as_deref(), &known.resource_version)
    }

    /// An object with only its identity, for deletes of objects whose last state is not kept.
    pub(super) fn identity_object(
        &self,
        uid: &str,
        name: &str,
        namespace: Option<&str>,
        resource_version: &str,
    ) -> Value {
        let mut metadata = json!({"name": name, "uid": uid, "resourceVersion": resource_version});
        if let Some(ns) = namespace {
            metadata["namespace"] = json!(ns);
        }
        json!({
            "apiVersion": self.key.resource.api_version,
            "kind": self.key.resource.kind,
            "metadata": metadata,
        })
    }

    /// The object as JSON. Its fields other than the metadata are moved, not copied.
    fn to_value(&self, object: DynamicObject) -> Value {
        let DynamicObject { types, metadata, data } = object;
        let mut map = match data {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        // List items come without apiVersion and kind.
        let (api_version, kind) = match types {
            Some(types) => (types.api_version, types.kind),
            None => (self.key.resource.api_version.clone(), self.key.resource.kind.clone()),
        };
        map.insert("apiVersion".into(), Value::String(api_version));
        map.insert("kind".into(), Value::String(kind));
        map.insert("metadata".into(), serde_json::to_value(&metadata).unwrap_or_default());
        Value::Object(map)
    }
}

/// A message for a watch error, and whether the API server refused the request (a
/// configuration problem that retrying alone will not fix). An empty message means the error
/// is part of normal operation (410 Gone: the watch re-lists).
fn describe_error(error: &watcher::Error, key: &WatchKey) -> (String, bool) {
    let verb_error = |verb: &str, error: &kube::Error| -> (String, bool) {
        match error {
            kube::Error::Api(status) => {
                let refused = matches!(status.code, 400 | 401 | 403 | 404);
                let hint = match status.code {
                    403 => match key.identity {
                        Identity::Own => format!(
                            " (RBAC: {} needs list and watch on {}, or the TriggerService a spec.serviceAccountName \
                             that has them)",
                            key.identity,
                            rbac_target(key)
                        ),
                        Identity::ServiceAccount { .. } => {
                            format!(" (RBAC: {} needs list and watch on {})", key.identity, rbac_target(key))
                        }
                    },
                    401 => " (the credentials in the kubeconfig were not accepted)".to_string(),
                    _ => String::new(),
                };
                (format!("{verb} {key}: {} {}: {}{hint}", status.code, status.reason, status.message), refused)
            }
            other => (format!("{verb} {key}: {other}"), false),
        }
    };
    match error {
        watcher::Error::InitialListFailed(e) => verb_error("cannot list", e),
        watcher::Error::WatchStartFailed(e) => verb_error("cannot watch", e),
        watcher::Error::WatchFailed(e) => verb_error("watch of", e),
        watcher::Error::WatchError(status) if status.code == 410 => {
            tracing::info!(watch = %key, "watch position expired (410 Gone); re-listing");
            (String::new(), false)
        }
        watcher::Error::WatchError(status) => {
            (format!("watch of {key}: {} {}: {}", status.code, status.reason, status.message), false)
        }
        watcher::Error::NoResourceVersion => {
            (format!("watch of {key}: the API server sent an object without a resourceVersion"), false)
        }
    }
}

fn rbac_target(key: &WatchKey) -> String {
    let r = &key.resource;
    let group = if r.group.is_empty() { "core".to_string() } else { r.group.clone() };
    match &key.namespace {
        Some(ns) => format!("{} ({group} group) in namespace {ns}", r.plural),
        None => format!("{} ({group} group) in all namespaces", r.plural),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_are_the_lists_after_the_first_and_the_watches_that_follow_no_list() {
        let mut detector = RestartDetector::default();
        let sent = [
            ("limit=100", false),                                             // the first list
            ("limit=100&continue=abc", false),                                // its second page
            ("watch=true&resourceVersion=7&allowWatchBookmarks=true", false), // the watch after it
            ("watch=true&resourceVersion=9", true),                           // resumed after the stream ended
            ("watch=1&resourceVersion=9", true),                              // retried after it failed
            ("limit=100", true),                                              // re-listed after 410 Gone
            ("watch=true&resourceVersion=12", false),                         // the watch after the re-list
        ];
        for (query, restarts) in sent {
            assert_eq!(detector.restarts(query), restarts, "{query}");
        }
    }
}
