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
//!
//! By role: this module holds the hub's API and the registry of watches; `task` is the task
//! around one watch (its stream, what it remembers of each object, its health); `fanout` hands
//! a change to the subscribers that select it, as shared events; `catch_up` tells a joining
//! subscriber about the objects that already exist (replays, and catch-ups of stored indexes).

use std::collections::{HashMap, hash_map};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ktrigger_core::Annotation;
use ktrigger_core::EventSink;
use ktrigger_core::sync::lock;
use ktrigger_core::{TriggerId, stable_id};
use kube::Client;
use kube::api::ApiResource;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::identity::{self, Identity};
use crate::position::{Checkpoints, Position};
use crate::selector::{ObjectSelector, StoredLabels};

mod catch_up;
mod fanout;
mod list;
mod task;

use catch_up::Durable;
use task::start_watch;

/// After an error, a watch that reports no further error for this long is taken to work again:
/// the watcher retries at least every 30 s (its longest backoff) while it keeps failing.
const RECOVERY_QUIET: Duration = Duration::from_secs(40);

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

impl EventShape {
    /// The event of `change` as it is, named by source type `source`: the raw object, the change's
    /// kind as `event.type`, seen now, with no preset and no annotation.
    pub fn of_change(source: &'static str, change: &Change) -> EventShape {
        EventShape {
            source,
            event_type: change.kind.as_str(),
            preset: None,
            derived: false,
            time: None,
            id: change_id(change),
            annotation: None,
        }
    }
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
    /// The watch's key, shared by its task and its subscriptions.
    key: Arc<WatchKey>,
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
                let (checkpoints, failed) = Checkpoints::new(position.state.clone());
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
        let key = entry.key.clone();
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
    key: Arc<WatchKey>,
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

    /// The watch this subscription is on (one key shared by the watch's subscriptions).
    pub fn key(&self) -> &Arc<WatchKey> {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

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
