//! The WatchHub: one Kubernetes watch per (resource, namespace, identity, and the field selectors
//! only the API server can evaluate), however many triggers subscribe to it, with each change
//! fanned out as one shared event to the triggers that asked for it.
//!
//! Label selectors and field selectors on `metadata.name` and `metadata.namespace` are evaluated
//! here, per subscriber, as a watch selected by the API server would: a change that moves an
//! object into a subscriber's selector reaches it as a create, one that moves it out as a delete
//! (of the object as it is now), and replays and catch-ups only list selected objects. To tell
//! whether the previous state was selected, the watch remembers each object's labels (objects
//! with the same labels share one copy). A trigger on one namespace joins a synced, working watch
//! of all namespaces opened as the same identity rather than opening its own: that identity has
//! shown it may read them all, and the trigger still sees its namespace only.
//!
//! The identity is part of the key so that sharing never widens what a trigger sees: a watch is
//! opened as its subscribers' identity. A trigger acting as another ServiceAccount joins it only
//! as a guest that a SubjectAccessReview allows to list and watch the same objects (see
//! `access.rs` and `Cluster::subscribe`), asked again every `access_review_ttl`.
//!
//! A watch is a task around kube-runtime's `watcher` (list, then watch from the list's
//! resourceVersion, resume after dropped streams, re-list after 410 Gone, exponential backoff
//! with jitter between failed attempts). The task keeps, per object, only what it needs to tell
//! a create from an update and to notice what a re-list changed: uid, name, resourceVersion and
//! occurrence count. Full copies of the previous object are kept only while a subscriber needs
//! `oldObject`. Objects present when the watch starts are not reported, except to subscribers
//! that asked for `replayExisting`.
//!
//! A trigger whose state store is durable keeps its own index of the objects on the watch (see
//! `position.rs`). When it subscribes, and the watch has synced, its index is compared with what
//! the watch knows, listing the objects like a replay does: it gets exactly the creates, updates
//! and deletes it missed while it was not running. Until it has caught up, changes the watch
//! reports are told to it relative to its own index, not the watch's.
//!
//! Watch restarts are counted from the requests a watch sends (see `RestartDetector`): the
//! watcher resumes a stream that ended without telling its consumer.

use std::collections::{HashMap, HashSet, hash_map};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use ktrigger_core::{Annotation, Event, EventSink, SharedEvent, Tracked, TriggerId, stable_id};
use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Client};
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::identity::{self, Identity};
use crate::position::{Checkpoints, Position, Stored, Write};
use crate::selector::{LabelInterner, ObjectSelector, StoredLabels, labels_of};

/// After an error, a watch that reports no further error for this long is taken to work again:
/// the watcher retries at least every 30 s (its longest backoff) while it keeps failing.
const RECOVERY_QUIET: Duration = Duration::from_secs(40);

/// Objects listed per page when a subscriber joins a running watch with `replayExisting`.
const REPLAY_PAGE: u32 = 500;

/// What one watch watches; triggers with equal keys share the watch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WatchKey {
    /// The resource (group, version, kind, plural).
    pub resource: ApiResource,
    /// The namespace, or `None` for all namespaces (and for cluster-scoped resources).
    pub namespace: Option<String>,
    /// Canonical field selector on fields the engine does not evaluate; empty for all.
    pub fields: String,
    /// Who the watch lists and watches as.
    pub identity: Identity,
}

impl WatchKey {
    /// What is watched, without who watches it: for messages to a trigger that shares a watch
    /// opened as another identity, which must not learn that identity.
    pub fn scope(&self) -> impl fmt::Display + '_ {
        Scope(self)
    }

    /// Whether `other` watches the same objects (whoever watches them).
    fn same_scope(&self, other: &WatchKey) -> bool {
        self.resource == other.resource && self.namespace == other.namespace && self.fields == other.fields
    }
}

impl fmt::Display for WatchKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} as {}", self.scope(), self.identity)
    }
}

/// A [`WatchKey`] without its identity.
struct Scope<'a>(&'a WatchKey);

impl fmt::Display for Scope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = self.0;
        let r = &key.resource;
        if r.group.is_empty() {
            write!(f, "{}/{}", r.version, r.plural)?;
        } else {
            write!(f, "{}.{}/{}", r.plural, r.group, r.version)?;
        }
        match &key.namespace {
            Some(ns) => write!(f, " in namespace {ns}")?,
            None => write!(f, " in all namespaces")?,
        }
        if !key.fields.is_empty() {
            write!(f, " with fields {:?}", key.fields)?;
        }
        Ok(())
    }
}

/// Tunables of the hub.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// How long a watch may keep failing before its subscribers report it unhealthy.
    pub unhealthy_after: Duration,
    /// How long a SubjectAccessReview that lets a ServiceAccount share a watch opened as another
    /// identity is trusted before it is asked again; zero: watches are never shared across
    /// identities.
    pub access_review_ttl: Duration,
}

impl Default for HubOptions {
    fn default() -> Self {
        HubOptions { unhealthy_after: Duration::from_secs(120), access_review_ttl: Duration::from_secs(60) }
    }
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// It appeared (or, for replays, it already existed).
    Create,
    /// It changed.
    Update,
    /// It was deleted.
    Delete,
}

impl ChangeKind {
    /// `create`, `update` or `delete`: the `event.type` of resource events.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Create => "create",
            ChangeKind::Update => "update",
            ChangeKind::Delete => "delete",
        }
    }
}

/// One change of one object, as the watch task hands it to subscribers.
pub struct Change {
    /// Create, update or delete.
    pub kind: ChangeKind,
    /// The object after the change (the last state for deletes).
    pub object: Value,
    /// The previous object, when some subscriber keeps them and it was known.
    pub old: Option<Arc<Value>>,
    /// The occurrence count of the previous object (`count` / `series.count` of Events).
    pub old_occurrences: Option<u64>,
    /// The resourceVersion the object had before it was deleted, when known: deletes are
    /// identified by it, so that a delete seen live and one found missing after a restart have
    /// the same id.
    pub old_resource_version: Option<Box<str>>,
    /// The labels of the previous object, when known: whether it was selected.
    old_labels: Option<Arc<StoredLabels>>,
    derived: OnceLock<Value>,
}

impl Change {
    pub(crate) fn new(kind: ChangeKind, object: Value) -> Self {
        Change {
            kind,
            object,
            old: None,
            old_occurrences: None,
            old_resource_version: None,
            old_labels: None,
            derived: OnceLock::new(),
        }
    }

    /// This change as a create: for a subscriber it moved the object into.
    fn moved_in(&self) -> Change {
        Change::new(ChangeKind::Create, self.object.clone())
    }

    /// This change as a delete of the object as it is now: for a subscriber it moved the object
    /// out of. Identified, like deletes, by the resourceVersion the subscriber last saw.
    fn moved_out(&self) -> Change {
        let mut change = Change::new(ChangeKind::Delete, self.object.clone());
        change.old = self.old.clone();
        change.old_occurrences = self.old_occurrences;
        change.old_resource_version = self.old_resource_version.clone();
        change.old_labels = self.old_labels.clone();
        change
    }

    /// A view of the object computed once per change and shared by subscribers (the normalized
    /// Event of k8s-events sources).
    pub fn derived(&self, compute: impl FnOnce(&Value) -> Value) -> &Value {
        self.derived.get_or_init(|| compute(&self.object))
    }
}

/// How a subscriber wants to see a change: subscribers that see it alike share one event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventShape {
    /// The source type named in `event.source`.
    pub source: &'static str,
    /// `event.type`.
    pub event_type: &'static str,
    /// `event.preset`.
    pub preset: Option<Arc<str>>,
    /// The object is [`Change::derived`] rather than the raw object.
    pub derived: bool,
    /// `event.time`, when not the time the change was seen.
    pub time: Option<DateTime<Utc>>,
    /// `event.id`: deterministic, so the same change seen again has the same id.
    pub id: String,
    /// `event.severity` and `event.tags` from an event mapping.
    pub annotation: Option<Arc<Annotation>>,
}

/// Decides, per subscriber, which changes become events and how they look.
pub trait Interest: Send + Sync {
    /// The event this subscriber gets for `change`, or `None` when it does not want it.
    fn shape(&self, change: &Change) -> Option<EventShape>;
}

/// One trigger's subscription request.
pub struct Subscriber {
    /// The trigger, for logs.
    pub trigger: TriggerId,
    /// Where its events go.
    pub sink: EventSink,
    /// Which changes it wants.
    pub interest: Box<dyn Interest>,
    /// Which objects it wants.
    pub selector: ObjectSelector,
    /// Whether its filter or templates read `oldObject`.
    pub needs_old: bool,
    /// Whether objects that exist when it subscribes are reported to it as creates (on its first
    /// start only, when it has a `position`).
    pub replay_existing: bool,
    /// Its stored index of the watch's objects, when its state store is durable.
    pub position: Option<Position>,
}

/// The state of one watch, as its subscribers see it.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// The first list completed.
    pub synced: bool,
    /// When the current run of errors began.
    pub broken_since: Option<Instant>,
    /// When the latest error happened.
    pub last_error_at: Option<Instant>,
    /// The latest error.
    pub last_error: Option<String>,
    /// The latest error is a refusal (400, 401, 403, 404) of the list or watch request.
    pub refused: bool,
}

/// What a subscriber should do about its watch's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Working, or not failing for long enough to matter.
    Fine,
    /// The API server refuses the watch before it ever synced (RBAC, bad selector, no such resource).
    Refused(String),
    /// The watch has been failing for longer than allowed.
    Unhealthy(String),
}

impl Health {
    /// Judges the health at `now`.
    pub fn verdict(&self, now: Instant, unhealthy_after: Duration) -> Verdict {
        let (Some(since), Some(last), Some(error)) = (self.broken_since, self.last_error_at, &self.last_error) else {
            return Verdict::Fine;
        };
        if now.duration_since(last) > RECOVERY_QUIET {
            return Verdict::Fine;
        }
        if self.refused && !self.synced {
            return Verdict::Refused(error.clone());
        }
        let broken = now.duration_since(since);
        if broken >= unhealthy_after {
            return Verdict::Unhealthy(format!("watch failing for {}s: {error}", broken.as_secs()));
        }
        Verdict::Fine
    }
}

enum Command {
    Join(u64, Box<(Subscriber, Option<Durable>)>),
    Leave(u64),
}

struct Entry {
    commands: mpsc::UnboundedSender<Command>,
    health: watch::Receiver<Health>,
    subscribers: usize,
    cancel: CancellationToken,
}

struct Shared {
    options: HubOptions,
    watches: Mutex<HashMap<WatchKey, Entry>>,
    next_id: AtomicU64,
    opened: AtomicU64,
    restarts: Arc<AtomicU64>,
}

/// Shares Kubernetes watches between triggers. Cheap to clone.
#[derive(Clone)]
pub struct WatchHub {
    shared: Arc<Shared>,
}

impl fmt::Debug for WatchHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchHub").field("open_watches", &self.open_watches()).finish()
    }
}

impl WatchHub {
    /// A hub with no watches.
    pub fn new(options: HubOptions) -> Self {
        WatchHub {
            shared: Arc::new(Shared {
                options,
                watches: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                opened: AtomicU64::new(0),
                restarts: Arc::new(AtomicU64::new(0)),
            }),
        }
    }

    /// The hub's tunables.
    pub fn options(&self) -> &HubOptions {
        &self.shared.options
    }

    /// Adds a subscriber to the watch of `key`, starting the watch when it is the first one;
    /// the watch sends through `client` (this process's own) as `key.identity`. A subscriber on
    /// one namespace joins instead a synced, working watch of all namespaces opened as the same
    /// identity, selecting its namespace there. The subscription ends when the returned handle is
    /// dropped; the watch stops with its last subscriber. Must be called within a tokio runtime.
    pub fn subscribe(
        &self,
        client: &Client,
        key: WatchKey,
        mut subscriber: Subscriber,
    ) -> Result<Subscription, String> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (durable, failed) = match subscriber.position.take() {
            Some(position) => {
                let (checkpoints, failed) = Checkpoints::start(position.state.clone());
                (Some(Durable::new(position, checkpoints)), Some(failed))
            }
            None => (None, None),
        };
        let trigger = subscriber.trigger.clone();
        let mut watches = lock(&self.shared.watches);
        let key = match key.namespace.as_deref().and_then(|ns| Some((ns, all_namespaces(&watches, &key)?))) {
            Some((namespace, wider)) => {
                subscriber.selector = subscriber.selector.in_namespace(namespace);
                wider
            }
            None => key,
        };
        let entry = match watches.entry(key.clone()) {
            hash_map::Entry::Occupied(entry) => entry.into_mut(),
            hash_map::Entry::Vacant(vacant) => {
                let client = identity::client_as(client, &key.identity)?;
                let total = self.shared.opened.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::info!(watch = %key, watches_opened = total, "opening watch");
                vacant.insert(start_watch(client, key.clone(), self.shared.restarts.clone()))
            }
        };
        entry.subscribers += 1;
        let _ = entry.commands.send(Command::Join(id, Box::new((subscriber, durable))));
        tracing::debug!(watch = %key, trigger = %trigger, subscribers = entry.subscribers, "trigger subscribed");
        Ok(Subscription { shared: self.shared.clone(), key, id, health: entry.health.clone(), guest: None, failed })
    }

    /// A running watch of the same objects as `key` opened as another identity, synced and not
    /// failing: one that a trigger acting as `key.identity` may share once it is allowed to list
    /// and watch them.
    pub fn shareable(&self, key: &WatchKey) -> Option<WatchKey> {
        let watches = lock(&self.shared.watches);
        watches
            .iter()
            .filter(|(other, _)| other.identity != key.identity && other.same_scope(key))
            .find(|(_, entry)| {
                let health = entry.health.borrow();
                health.synced && health.last_error.is_none()
            })
            .map(|(other, _)| other.clone())
    }

    /// Watches running now.
    pub fn open_watches(&self) -> usize {
        lock(&self.shared.watches).len()
    }

    /// The watches that have been failing for longer than `unhealthy_after`, each with why: what
    /// `/readyz` reports. Refusals (RBAC, a bad selector, an unknown resource) are left out: they
    /// are the configuration of the triggers on that watch, reported on those triggers, and one
    /// TriggerService's identity must not make the process unready for every other one.
    pub fn unhealthy(&self) -> Vec<String> {
        let now = Instant::now();
        let watches = lock(&self.shared.watches);
        let mut found: Vec<String> = watches
            .iter()
            .filter(|(_, entry)| !entry.health.borrow().refused)
            .filter_map(|(key, entry)| match entry.health.borrow().verdict(now, self.shared.options.unhealthy_after) {
                Verdict::Fine => None,
                Verdict::Refused(reason) | Verdict::Unhealthy(reason) => Some(format!("{key}: {reason}")),
            })
            .collect();
        found.sort();
        found
    }

    /// Watches opened since the hub was made (a watch restarted after its last subscriber left
    /// counts again).
    pub fn watches_opened(&self) -> u64 {
        self.shared.opened.load(Ordering::Relaxed)
    }

    /// Times a watch was re-established since the hub was made: resumed after its stream ended,
    /// re-listed after 410 Gone, or retried after a failed list or watch request. Each attempt
    /// counts, a failed one too.
    pub fn watch_restarts(&self) -> u64 {
        self.shared.restarts.load(Ordering::Relaxed)
    }

    fn leave(&self, key: &WatchKey, id: u64) {
        let mut watches = lock(&self.shared.watches);
        let Some(entry) = watches.get_mut(key) else { return };
        let _ = entry.commands.send(Command::Leave(id));
        entry.subscribers -= 1;
        if entry.subscribers == 0 {
            entry.cancel.cancel();
            watches.remove(key);
            tracing::info!(watch = %key, "closing watch: no trigger subscribes to it any more");
        }
    }
}

/// One trigger's place on a watch; dropping it unsubscribes.
pub struct Subscription {
    shared: Arc<Shared>,
    key: WatchKey,
    id: u64,
    health: watch::Receiver<Health>,
    /// The subscriber's identity when it shares a watch opened as another one.
    pub(crate) guest: Option<Identity>,
    failed: Option<watch::Receiver<Option<String>>>,
}

impl Subscription {
    /// The watch's health, updated as it changes.
    pub fn health(&self) -> watch::Receiver<Health> {
        self.health.clone()
    }

    /// The watch this subscription is on.
    pub fn key(&self) -> &WatchKey {
        &self.key
    }

    /// Set, with why, when the subscriber's stored index can no longer follow the watch (an
    /// event was not stored, the store failed): it must subscribe anew to catch up. `None` when
    /// it keeps no index.
    pub fn position_failed(&self) -> Option<watch::Receiver<Option<String>>> {
        self.failed.clone()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        WatchHub { shared: self.shared.clone() }.leave(&self.key, self.id);
    }
}

/// A synced, working watch of all namespaces with what `key` watches otherwise (same resource,
/// server-side fields and identity).
fn all_namespaces(watches: &HashMap<WatchKey, Entry>, key: &WatchKey) -> Option<WatchKey> {
    let wider = WatchKey { namespace: None, ..key.clone() };
    let entry = watches.get(&wider)?;
    let health = entry.health.borrow();
    (health.synced && health.last_error.is_none()).then_some(wider)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

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
fn restart_counting(client: Client, key: WatchKey, restarts: Arc<AtomicU64>) -> Client {
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

fn start_watch(client: Client, key: WatchKey, restarts: Arc<AtomicU64>) -> Entry {
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
        key,
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
    Entry { commands, health, subscribers: 0, cancel }
}

/// What the watch remembers of one object.
struct Known {
    name: Box<str>,
    namespace: Option<Box<str>>,
    resource_version: Box<str>,
    occurrences: u64,
    labels: Option<Arc<StoredLabels>>,
    last: Option<Arc<Value>>,
}

/// Where a subscriber with `replayExisting` stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replay {
    /// Nothing to replay (not asked, or done).
    Done,
    /// Receives the objects of the first list as it runs.
    Live,
    /// Joined while the first list was running: served by a list of its own when it ends.
    Pending,
}

struct Member {
    id: u64,
    subscriber: Subscriber,
    replay: Replay,
    durable: Option<Durable>,
}

/// A subscriber's own index of the watch's objects, kept in the state store.
struct Durable {
    checkpoints: Checkpoints,
    scope: String,
    keep_objects: bool,
    /// The index loaded at subscription, until the subscriber has caught up with it.
    stored: Option<HashMap<String, Stored>>,
    /// Objects the subscriber knows in another state than the watch does (`None`: not at all),
    /// until the watch reports their next change.
    behind: HashMap<String, Option<Stored>>,
    /// Changes are reported to it once it has compared its index with the watch's.
    caught_up: bool,
}

impl Durable {
    fn new(position: Position, checkpoints: Checkpoints) -> Self {
        Durable {
            checkpoints,
            scope: position.scope,
            keep_objects: position.keep_objects,
            stored: position.stored,
            behind: HashMap::new(),
            caught_up: false,
        }
    }

    /// Queues the index write for `change`, made once `tracked` (its event, if it got one) is
    /// handled.
    async fn record(&self, tracked: Option<Tracked>, change: &Change) {
        let uid = uid_of(&change.object);
        let write = match change.kind {
            ChangeKind::Create | ChangeKind::Update => Write::Put(uid, Stored::of(&change.object, self.keep_objects)),
            ChangeKind::Delete => Write::Delete(uid),
        };
        self.checkpoints.send(tracked, write).await;
    }

    /// How a change the watch reports looks to a subscriber that knows the object as `view`;
    /// `None` when it has nothing to learn from it.
    fn view(change: &Change, view: Option<Stored>, needs_old: bool) -> Option<Change> {
        match (change.kind, view) {
            (ChangeKind::Delete, None) => None,
            (ChangeKind::Create | ChangeKind::Update, Some(known))
                if known.resource_version == resource_version(&change.object) =>
            {
                None
            }
            (ChangeKind::Create | ChangeKind::Update, None) => {
                Some(Change::new(ChangeKind::Create, change.object.clone()))
            }
            (kind, Some(known)) => {
                let kind = if kind == ChangeKind::Delete { kind } else { ChangeKind::Update };
                let mut own = Change::new(kind, change.object.clone());
                own.old_occurrences = Some(known.occurrences);
                own.old_resource_version = Some(known.resource_version.as_str().into());
                if needs_old {
                    own.old = known.object.map(Arc::new);
                }
                Some(own)
            }
        }
    }
}

struct WatchTask {
    key: WatchKey,
    /// What the watcher lists and watches through: its restarts are counted.
    watched: Api<DynamicObject>,
    /// What replays list through.
    api: Api<DynamicObject>,
    subscribers: Vec<Member>,
    known: HashMap<String, Known>,
    /// The labels of the known objects.
    labels: LabelInterner,
    keep_old: bool,
    /// The first list completed.
    synced: bool,
    /// The uids seen by the list in progress.
    listing: Option<HashSet<String>>,
    /// Subscribers waiting for a replay list.
    pending_replays: Vec<u64>,
    /// Subscribers with a stored index waiting for the watch to sync to catch up.
    pending_catch_ups: Vec<u64>,
    health: watch::Sender<Health>,
}

impl WatchTask {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>, cancel: CancellationToken) {
        let mut config = watcher::Config::default();
        if !self.key.fields.is_empty() {
            config = config.fields(&self.key.fields);
        }
        let mut stream = watcher(self.watched.clone(), config).default_backoff().boxed();
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                command = commands.recv() => match command {
                    Some(Command::Join(id, joining)) => self.join(id, joining.0, joining.1).await,
                    Some(Command::Leave(id)) => self.leave(id),
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

    async fn join(&mut self, id: u64, subscriber: Subscriber, durable: Option<Durable>) {
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
            if self.synced && self.listing.is_none() {
                self.catch_up(id).await;
            } else {
                self.pending_catch_ups.push(id);
            }
        }
        if replay == Replay::Pending {
            self.pending_replays.push(id);
            if self.synced && self.listing.is_none() {
                self.serve_replays().await;
            }
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
                for id in std::mem::take(&mut self.pending_catch_ups) {
                    self.catch_up(id).await;
                }
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
    fn identity_object(&self, uid: &str, name: &str, namespace: Option<&str>, resource_version: &str) -> Value {
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

    /// Lists the objects the watch knows and sends them as creates to subscribers waiting for a
    /// replay. Objects the watch has not seen yet are left out: they arrive as creates anyway.
    async fn serve_replays(&mut self) {
        if self.pending_replays.is_empty() {
            return;
        }
        let waiting = std::mem::take(&mut self.pending_replays);
        let mut params = self.list_params();
        loop {
            let page = match self.api.list(&params).await {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(watch = %self.key, %error, "cannot list existing objects for replayExisting");
                    return;
                }
            };
            let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
            for object in page.items {
                let object = self.to_value(object);
                if self.known.contains_key(&uid_of(&object)) {
                    self.dispatch(Change::new(ChangeKind::Create, object), Some(&waiting)).await;
                }
            }
            match next {
                Some(token) => params.continue_token = Some(token),
                None => break,
            }
        }
        for member in &mut self.subscribers {
            if waiting.contains(&member.id) {
                member.replay = Replay::Done;
            }
        }
    }

    /// Sends one change to every subscriber that selects the object and wants the change (or
    /// only to `only`), building each distinct event once. Subscribers with an index see it
    /// relative to what they know, and record it there once they have handled it.
    async fn dispatch(&mut self, change: Change, only: Option<&[u64]>) {
        self.deliver(change, only, true).await;
    }

    /// [`dispatch`](Self::dispatch), with the subscribers' selectors applied when `select` (not
    /// to the changes of a catch-up, which are already made relative to what the subscriber knows).
    async fn deliver(&mut self, change: Change, only: Option<&[u64]>, select: bool) {
        let uid = uid_of(&change.object);
        let mut built: Vec<(EventShape, SharedEvent)> = Vec::new();
        let mut closed = Vec::new();
        // The change as a create, for subscribers it moved the object into, and as a delete, for
        // those it moved it out of: made at most once each, and only when needed.
        let (mut entered, mut left): (Option<Change>, Option<Change>) = (None, None);
        for member in &mut self.subscribers {
            if only.is_some_and(|ids| !ids.contains(&member.id)) {
                continue;
            }
            let behind = match &mut member.durable {
                Some(durable) if !durable.caught_up => continue,
                Some(durable) => durable.behind.remove(&uid),
                None => None,
            };
            let selector = &member.subscriber.selector;
            let base: &Change = if !select || selector.selects_all() {
                &change
            } else {
                let now = change.kind != ChangeKind::Delete && selector.matches(&change.object);
                // A subscriber behind the watch knows the object as its index says.
                let before = match &behind {
                    Some(view) => view.is_some(),
                    None => was_selected(selector, &change),
                };
                match (before, now) {
                    (false, false) => continue,
                    (true, true) => &change,
                    (_, true) if change.kind == ChangeKind::Create || behind.is_some() => &change,
                    (_, true) => entered.get_or_insert_with(|| change.moved_in()),
                    (_, false) if change.kind == ChangeKind::Delete => &change,
                    (_, false) => left.get_or_insert_with(|| change.moved_out()),
                }
            };
            let own = match behind {
                Some(view) => match Durable::view(base, view, member.subscriber.needs_old) {
                    Some(own) => Some(own),
                    None => continue,
                },
                None => None,
            };
            let seen = own.as_ref().unwrap_or(base);
            let event = match member.subscriber.interest.shape(seen) {
                None => None,
                Some(shape) if own.is_some() => Some(Arc::new(build_event(&shape, seen))),
                Some(shape) => Some(match built.iter().find(|(s, _)| *s == shape) {
                    Some((_, event)) => event.clone(),
                    None => {
                        let event = Arc::new(build_event(&shape, seen));
                        built.push((shape, event.clone()));
                        event
                    }
                }),
            };
            let sink = &member.subscriber.sink;
            match (&member.durable, event) {
                (None, None) => {}
                (None, Some(event)) => {
                    if !sink.send_shared(event).await {
                        closed.push(member.id);
                    }
                }
                (Some(durable), event) => {
                    let tracked = match event {
                        None => None,
                        Some(event) => match sink.send_tracked(event).await {
                            Some(tracked) => Some(tracked),
                            None => {
                                closed.push(member.id);
                                continue;
                            }
                        },
                    };
                    durable.record(tracked, seen).await;
                }
            }
        }
        if !closed.is_empty() {
            self.subscribers.retain(|m| !closed.contains(&m.id));
        }
    }

    /// The index of subscriber `id`, when it keeps one.
    fn durable(&mut self, id: u64) -> Option<&mut Durable> {
        self.subscribers.iter_mut().find(|m| m.id == id)?.durable.as_mut()
    }

    /// Brings subscriber `id` up to date with the synced watch: compares its stored index with
    /// the objects listed now, and reports to it what changed since it was stored. On its first
    /// start (nothing stored for this watch) it records them instead, or with `replayExisting`
    /// reports them as creates.
    async fn catch_up(&mut self, id: u64) {
        let Some(member) = self.subscribers.iter_mut().find(|m| m.id == id) else { return };
        let (replay, needs_old) = (member.subscriber.replay_existing, member.subscriber.needs_old);
        let selector = member.subscriber.selector.clone();
        let Some(durable) = member.durable.as_mut() else { return };
        durable.caught_up = true;
        let keep_objects = durable.keep_objects;
        let stored = durable.stored.take();
        let first = stored.is_none();
        let mut stored = stored.unwrap_or_default();
        if first {
            let scope = durable.scope.clone();
            durable.checkpoints.send(None, Write::Reset(scope)).await;
        }
        let mut listed = HashSet::new();
        // Listed as selected by the API server: a trigger that selects few objects of a watch
        // shared with many does not read them all (the selection is checked here again).
        let (labels, fields) = selector.for_server();
        let mut params = self.list_params();
        if !labels.is_empty() {
            params = params.labels(&labels);
        }
        if !fields.is_empty() {
            let all = [params.field_selector.take().unwrap_or_default(), fields];
            params = params.fields(&all.iter().filter(|f| !f.is_empty()).cloned().collect::<Vec<_>>().join(","));
        }
        loop {
            let page = match self.api.list(&params).await {
                Ok(page) => page,
                Err(error) => {
                    let reason = format!("cannot list {} to catch up: {error}", self.key.scope());
                    if let Some(durable) = self.durable(id) {
                        durable.checkpoints.fail(reason);
                    }
                    return;
                }
            };
            let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
            for object in page.items {
                let object = self.to_value(object);
                let uid = uid_of(&object);
                // Objects it does not select are, to this subscriber, not there.
                let selected = selector.matches(&object);
                if selected {
                    listed.insert(uid.clone());
                }
                let own = stored.remove(&uid);
                let ahead = self.known.get(&uid).map(|known| *known.resource_version != *resource_version(&object));
                let Some(durable) = self.durable(id) else { return };
                let Some(ahead) = ahead else {
                    // Newer than the watch's position: it reports the object soon, seen by the
                    // subscriber relative to what it knows.
                    if let Some(own) = own {
                        durable.behind.insert(uid, Some(own));
                    }
                    continue;
                };
                if ahead {
                    // The watch reports this change soon; the subscriber sees it relative to
                    // what it knows.
                    if !first || replay {
                        durable.behind.insert(uid, own);
                    }
                    continue;
                }
                if first && !replay {
                    if selected {
                        durable.checkpoints.send(None, Write::Put(uid, Stored::of(&object, keep_objects))).await;
                    }
                    continue;
                }
                let kind = if selected { ChangeKind::Create } else { ChangeKind::Delete };
                if let Some(change) = Durable::view(&Change::new(kind, object), own, needs_old) {
                    self.deliver(change, Some(&[id]), false).await;
                }
            }
            match next {
                Some(token) => params.continue_token = Some(token),
                None => break,
            }
        }
        if first {
            return;
        }
        // Known to the watch as selected, gone from the list: the watch reports the change that
        // removed it soon, which means nothing to a subscriber that never knew the object. (Those
        // the watch knows as not selected mean nothing to it anyway.)
        let unknown: Vec<String> = self
            .known
            .iter()
            .filter(|(uid, known)| {
                !listed.contains(*uid)
                    && !stored.contains_key(*uid)
                    && selector.matches_parts(
                        known.labels.as_deref().unwrap_or(&NO_LABELS),
                        &known.name,
                        known.namespace.as_deref().unwrap_or_default(),
                    )
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        if let Some(durable) = self.durable(id) {
            durable.behind.extend(unknown.into_iter().map(|uid| (uid, None)));
        }
        // Stored and not listed: deleted, or no longer selected, while the subscriber was not
        // running.
        for (uid, own) in stored {
            if let Some(known) = self.known.get(&uid) {
                let labels = known.labels.as_deref().unwrap_or(&NO_LABELS);
                let namespace = known.namespace.as_deref().unwrap_or_default();
                if selector.matches_parts(labels, &known.name, namespace) {
                    // Selected as the watch knows it: the watch reports the change that took
                    // it away soon, seen by the subscriber relative to what it knows.
                    if let Some(durable) = self.durable(id) {
                        durable.behind.insert(uid, Some(own));
                    }
                    continue;
                }
            }
            let object = match own.object {
                Some(object) => object,
                None => self.identity_object(&uid, &own.name, own.namespace.as_deref(), &own.resource_version),
            };
            let mut change = Change::new(ChangeKind::Delete, object);
            change.old_occurrences = Some(own.occurrences);
            change.old_resource_version = Some(own.resource_version.into());
            self.deliver(change, Some(&[id]), false).await;
        }
    }

    fn list_params(&self) -> ListParams {
        let mut params = ListParams::default().limit(REPLAY_PAGE);
        if !self.key.fields.is_empty() {
            params = params.fields(&self.key.fields);
        }
        params
    }
}

/// The labels of an object without any.
static NO_LABELS: LazyLock<StoredLabels> = LazyLock::new(StoredLabels::default);

/// Whether the object was selected before `change`, by its previous labels.
fn was_selected(selector: &ObjectSelector, change: &Change) -> bool {
    let metadata = &change.object["metadata"];
    let (name, namespace) =
        (metadata["name"].as_str().unwrap_or_default(), metadata["namespace"].as_str().unwrap_or_default());
    match (change.kind, &change.old_labels) {
        (ChangeKind::Create, _) => false,
        (_, Some(labels)) => selector.matches_parts(&**labels, name, namespace),
        (ChangeKind::Update, None) => selector.matches_parts(labels_of(&Value::Null), name, namespace),
        (ChangeKind::Delete, None) => selector.matches_parts(labels_of(&change.object), name, namespace),
    }
}

fn build_event(shape: &EventShape, change: &Change) -> Event {
    let object = if shape.derived {
        change.derived.get().cloned().unwrap_or_else(|| change.object.clone())
    } else {
        change.object.clone()
    };
    let mut event = Event::new(shape.source, shape.event_type, object).with_id(shape.id.clone());
    if change.kind == ChangeKind::Update {
        event.old_object = change.old.as_deref().cloned();
    }
    event.meta.preset = shape.preset.as_deref().map(str::to_string);
    if let Some(annotation) = &shape.annotation {
        annotation.apply(&mut event.meta);
    }
    if let Some(time) = shape.time {
        event.meta.time = time;
    }
    event
}

/// The deterministic id of a change of a resource: uid, resourceVersion (for deletes the last
/// one before the delete, when known) and change type.
pub fn change_id(change: &Change) -> String {
    let version = match (change.kind, &change.old_resource_version) {
        (ChangeKind::Delete, Some(version)) => version,
        _ => resource_version(&change.object),
    };
    stable_id(&[&uid_of(&change.object), version, change.kind.as_str()])
}

/// The uid of an object, or namespace/name when it has none.
pub(crate) fn uid_of(object: &Value) -> String {
    let metadata = &object["metadata"];
    match metadata["uid"].as_str() {
        Some(uid) if !uid.is_empty() => uid.to_string(),
        _ => format!("{}/{}", metadata["namespace"].as_str().unwrap_or(""), metadata["name"].as_str().unwrap_or("")),
    }
}

fn resource_version(object: &Value) -> &str {
    object["metadata"]["resourceVersion"].as_str().unwrap_or("")
}

/// How often a Kubernetes Event has occurred: the largest of `count`, `deprecatedCount` and
/// `series.count`, at least 1. Other objects count 1.
pub fn occurrences(object: &Value) -> u64 {
    [&object["count"], &object["deprecatedCount"], &object["series"]["count"]]
        .iter()
        .filter_map(|v| v.as_u64())
        .max()
        .unwrap_or(1)
        .max(1)
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
    fn occurrences_read_legacy_and_series_counts() {
        assert_eq!(occurrences(&json!({"count": 4})), 4);
        assert_eq!(occurrences(&json!({"series": {"count": 7}, "deprecatedCount": 1})), 7);
        assert_eq!(occurrences(&json!({"metadata": {}})), 1);
        assert_eq!(occurrences(&json!({"count": 0})), 1);
    }

    #[test]
    fn health_turns_unhealthy_only_after_the_allowed_time() {
        let start = Instant::now();
        let mut health = Health {
            synced: true,
            broken_since: Some(start),
            last_error_at: Some(start),
            last_error: Some("connection refused".into()),
            refused: false,
        };
        let allowed = Duration::from_secs(10);
        assert_eq!(health.verdict(start + Duration::from_secs(5), allowed), Verdict::Fine);
        health.last_error_at = Some(start + Duration::from_secs(11));
        assert!(matches!(health.verdict(start + Duration::from_secs(12), allowed), Verdict::Unhealthy(m)
            if m.contains("connection refused")));
        // No error for longer than the watcher's longest backoff: it works again.
        assert_eq!(health.verdict(start + Duration::from_secs(60), allowed), Verdict::Fine);
    }

    #[test]
    fn restarts_are_the_lists_after_the_first_and_the_watches_that_follow_no_list() {
        let mut detector = RestartDetector::default();
        let sent = [
            ("limit=500", false),                                             // the first list
            ("limit=500&continue=abc", false),                                // its second page
            ("watch=true&resourceVersion=7&allowWatchBookmarks=true", false), // the watch after it
            ("watch=true&resourceVersion=9", true),                           // resumed after the stream ended
            ("watch=1&resourceVersion=9", true),                              // retried after it failed
            ("limit=500", true),                                              // re-listed after 410 Gone
            ("watch=true&resourceVersion=12", false),                         // the watch after the re-list
        ];
        for (query, restarts) in sent {
            assert_eq!(detector.restarts(query), restarts, "{query}");
        }
    }

    #[test]
    fn refusals_before_the_first_sync_are_reported_at_once() {
        let now = Instant::now();
        let health = Health {
            synced: false,
            broken_since: Some(now),
            last_error_at: Some(now),
            last_error: Some("403 Forbidden".into()),
            refused: true,
        };
        assert_eq!(health.verdict(now, Duration::from_secs(600)), Verdict::Refused("403 Forbidden".into()));
    }
}
