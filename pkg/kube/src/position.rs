//! What a `resource-watcher` or `k8s-events` trigger remembers of the objects on its watch
//! across restarts, and the task that writes it.
//!
//! Per object the trigger keeps its resourceVersion, name, occurrence count (for Events) and,
//! when the trigger reports deletes or reads `oldObject`, its last state without
//! `metadata.managedFields`. Entries are written in the order the changes happened, each only
//! once the trigger has stored the event the change caused: an event the trigger could not store
//! stops the writing, so the index never runs ahead of what was delivered, and the next start
//! reports the change again (with the same id).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use ktrigger_core::sync::lock;
use ktrigger_core::{Handled, SourceState, Tracked};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

/// Key of the watch scope the index belongs to; an index of another scope is discarded.
const SCOPE_KEY: &str = "scope";
/// Prefix of the per-object keys, followed by the uid.
const OBJECT_PREFIX: &str = "obj/";
/// Writes waiting for their event to be handled; a full queue holds up the watch (backpressure).
const WRITE_QUEUE: usize = 1024;
/// Writes sent to the store and not yet durable.
const IN_FLIGHT: usize = 64;
/// Largest stored entry with the object's last state; a larger object is stored with its
/// identity only, so that a few huge objects cannot fill the store.
pub const MAX_KEPT_OBJECT_BYTES: usize = 128 * 1024;

/// What a trigger remembers of one object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    /// resourceVersion of the last state the trigger was told of.
    #[serde(rename = "rv")]
    pub resource_version: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, for namespaced objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Occurrence count (Events); 1 for other objects.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub occurrences: u64,
    /// The last state, kept when the trigger reports deletes or reads `oldObject`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<Value>,
}

fn one() -> u64 {
    1
}

fn is_one(count: &u64) -> bool {
    *count == 1
}

impl Stored {
    /// The entry for `object`, with a copy of it (without managedFields) when `keep_object`.
    pub fn of(object: &Value, keep_object: bool) -> Self {
        let metadata = &object["metadata"];
        let copy = keep_object.then(|| {
            let mut copy = object.clone();
            if let Some(metadata) = copy.get_mut("metadata").and_then(Value::as_object_mut) {
                metadata.remove("managedFields");
            }
            copy
        });
        Stored {
            resource_version: metadata["resourceVersion"].as_str().unwrap_or_default().to_string(),
            name: metadata["name"].as_str().unwrap_or_default().to_string(),
            namespace: metadata["namespace"].as_str().map(str::to_string),
            occurrences: crate::hub::occurrences(object),
            object: copy,
        }
    }

    /// The bytes this entry takes in the store: without the last state when that is larger
    /// than [`MAX_KEPT_OBJECT_BYTES`].
    pub fn encode(mut self) -> Vec<u8> {
        let bytes = serde_json::to_vec(&self).unwrap_or_default();
        if bytes.len() <= MAX_KEPT_OBJECT_BYTES || self.object.is_none() {
            return bytes;
        }
        self.object = None;
        serde_json::to_vec(&self).unwrap_or_default()
    }
}

/// A trigger's stored index, loaded when it subscribes.
#[derive(Debug)]
pub struct Position {
    pub(crate) state: SourceState,
    pub(crate) scope: String,
    /// Whether entries keep the object's last state.
    pub(crate) keep_objects: bool,
    /// The index as stored for this scope; `None` when there is none yet (first start, or the
    /// trigger now watches something else).
    pub(crate) stored: Option<HashMap<String, Stored>>,
}

impl Position {
    /// Loads what the trigger stored for the watch of `scope`; `None` when the store keeps
    /// nothing across restarts.
    pub async fn load(state: SourceState, scope: String, keep_objects: bool) -> Result<Option<Position>, String> {
        if !state.durable() {
            return Ok(None);
        }
        let entries = state.load().await.map_err(|e| format!("cannot read the stored watch position: {e}"))?;
        let same_scope = entries.iter().any(|(key, value)| key == SCOPE_KEY && value.as_slice() == scope.as_bytes());
        let stored = same_scope.then(|| {
            entries
                .iter()
                .filter_map(|(key, value)| {
                    let uid = key.strip_prefix(OBJECT_PREFIX)?;
                    match serde_json::from_slice::<Stored>(value) {
                        Ok(stored) => Some((uid.to_string(), stored)),
                        Err(error) => {
                            // Forgotten: the object is then reported as created.
                            tracing::warn!(uid, %error, "ignoring an unreadable stored watch entry");
                            None
                        }
                    }
                })
                .collect()
        });
        Ok(Some(Position { state, scope, keep_objects, stored }))
    }
}

/// One write of the index.
pub(crate) enum Write {
    /// Start the index anew for a scope: everything stored before is removed.
    Reset(String),
    /// The trigger knows the object in this state.
    Put(String, Stored),
    /// The trigger knows the object is gone.
    Delete(String),
}

/// A write waiting in a writer's queue, with the event it waits for (boxed: a channel allocates
/// room for 32 of its items at once).
type Queued = Box<(Option<Tracked>, Write)>;

/// Where a watch sends a trigger's index writes, in order. A writer task runs only while there
/// are writes to make: an idle trigger keeps no task, queue or commit in flight.
pub(crate) struct Checkpoints {
    /// What every writer started gets a copy of.
    writer: Writer,
    /// Closed when the last writer started has made all its writes: the next one waits for it.
    last_writer: Option<oneshot::Receiver<()>>,
}

impl Checkpoints {
    /// The writes of `state`; the receiver learns why writing stopped, if it does.
    pub(crate) fn new(state: SourceState) -> (Checkpoints, watch::Receiver<Option<String>>) {
        let (failed, failures) = watch::channel(None);
        (Checkpoints { writer: Writer { state, queue: Arc::default(), failed }, last_writer: None }, failures)
    }

    /// Queues `write`, to be made once `tracked` (if any) is handled.
    pub(crate) async fn send(&mut self, tracked: Option<Tracked>, write: Write) {
        let mut next = Box::new((tracked, write));
        let running = lock(&self.writer.queue).clone();
        if let Some(queue) = running {
            match queue.send(next).await {
                Ok(()) => return,
                Err(mpsc::error::SendError(back)) => next = back,
            }
        }
        // A writer that stopped has reported why; the trigger resubscribes and catches up.
        if self.writer.failed.borrow().is_some() {
            return;
        }
        let (queue, writes) = mpsc::channel(WRITE_QUEUE);
        // A new queue has room.
        let _ = queue.try_send(next);
        *lock(&self.writer.queue) = Some(queue);
        let (done, last_writer) = oneshot::channel();
        let previous = self.last_writer.replace(last_writer);
        tokio::spawn(self.writer.clone().write_in_order(previous, writes, done));
    }

    /// Stops the writing: the trigger cannot be brought up to date now.
    pub(crate) fn fail(&self, reason: String) {
        self.writer.fail(reason);
    }
}

/// A trigger's writer task: its state, the queue it takes its writes from, and where it reports
/// why it stopped.
#[derive(Clone)]
struct Writer {
    state: SourceState,
    /// The running writer's queue, shared with [`Checkpoints`]: an idle writer takes it away and
    /// closes it (a send already under way then fails and starts another writer).
    queue: Arc<Mutex<Option<mpsc::Sender<Queued>>>>,
    failed: watch::Sender<Option<String>>,
}

impl Writer {
    /// Makes the writes queued in `writes` in order, after those of the `previous` writer,
    /// until none is left to make (the queue is then taken away and closed: the next write
    /// starts another writer), or one fails. `done` is dropped when it ends.
    async fn write_in_order(
        self,
        previous: Option<oneshot::Receiver<()>>,
        mut writes: mpsc::Receiver<Queued>,
        done: oneshot::Sender<()>,
    ) {
        if let Some(previous) = previous {
            // Ends when the previous writer drops its sender.
            let _ = previous.await;
        }
        if self.failed.borrow().is_some() {
            return;
        }
        let mut commits = FuturesOrdered::new();
        let mut open = true;
        loop {
            tokio::select! {
                Some(result) = commits.next(), if !commits.is_empty() => {
                    if let Err(error) = result {
                        self.fail(format!("cannot store the watch position: {error}"));
                        return;
                    }
                }
                next = writes.recv(), if commits.len() < IN_FLIGHT => {
                    let Some(next) = next else { break };
                    let (tracked, write) = *next;
                    if let Some(tracked) = tracked
                        && let Handled::NotStored(reason) = tracked.handled().await
                    {
                        self.fail(format!("an event was not stored ({reason}); catching up"));
                        return;
                    }
                    let commit = match write {
                        Write::Reset(scope) => {
                            // Removed first and waited for, so that no entry of the new index is
                            // lost to a removal applied after it.
                            if let Err(error) = self.state.clear().wait().await {
                                self.fail(format!("cannot store the watch position: {error}"));
                                return;
                            }
                            self.state.put(SCOPE_KEY, scope.into_bytes())
                        }
                        Write::Put(uid, stored) => self.state.put(&format!("{OBJECT_PREFIX}{uid}"), stored.encode()),
                        Write::Delete(uid) => self.state.delete(&format!("{OBJECT_PREFIX}{uid}")),
                    };
                    commits.push_back(commit.wait());
                }
            }
            if open && commits.is_empty() && writes.is_empty() {
                // Idle: the queue goes (what was queued before the close is still taken).
                open = false;
                lock(&self.queue).take();
                writes.close();
            }
        }
        while let Some(result) = commits.next().await {
            if let Err(error) = result {
                self.fail(format!("cannot store the watch position: {error}"));
                return;
            }
        }
        drop(done);
    }

    /// Reports why the writing stopped.
    fn fail(&self, reason: String) {
        self.failed.send_replace(Some(reason));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ktrigger_core::{Event, EventSink, RedbStore, TriggerId};
    use serde_json::json;

    use super::*;

    /// A trigger's durable state in a fresh store, and its directory.
    fn durable_state() -> (SourceState, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = RedbStore::open(dir.path()).unwrap();
        (
            SourceState::new(
                Arc::new(store),
                &TriggerId { namespace: "apps".into(), service: "svc".into(), trigger: "t".into() },
            ),
            dir,
        )
    }

    /// The stored entries: uid → resourceVersion.
    async fn index(state: &SourceState) -> Vec<(String, String)> {
        let mut entries: Vec<(String, String)> = state
            .load()
            .await
            .unwrap()
            .into_iter()
            .filter_map(|(key, value)| {
                let uid = key.strip_prefix(OBJECT_PREFIX)?.to_string();
                Some((uid, serde_json::from_slice::<Stored>(&value).unwrap().resource_version))
            })
            .collect();
        entries.sort();
        entries
    }

    fn put(uid: &str, rv: &str) -> Write {
        let object = json!({"metadata": {"name": uid, "uid": uid, "resourceVersion": rv}});
        Write::Put(uid.to_string(), Stored::of(&object, false))
    }

    fn entries(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(uid, rv)| (uid.to_string(), rv.to_string())).collect()
    }

    /// Waits (bounded) until the index is `expected`.
    async fn wait_for_index(state: &SourceState, expected: &[(String, String)]) {
        for _ in 0..200 {
            if index(state).await == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(index(state).await, expected);
    }

    #[tokio::test]
    async fn writes_after_the_writer_went_idle_are_made_in_order() {
        let (state, _dir) = durable_state();
        let (mut checkpoints, failures) = Checkpoints::new(state.clone());
        checkpoints.send(None, Write::Reset("scope".into())).await;
        checkpoints.send(None, put("a", "1")).await;
        wait_for_index(&state, &entries(&[("a", "1")])).await;
        // The writer has nothing left to write: it goes idle and closes its queue.
        for _ in 0..200 {
            if lock(&checkpoints.writer.queue).is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(lock(&checkpoints.writer.queue).is_none(), "the idle writer gave its queue up");
        for round in 2..6 {
            checkpoints.send(None, Write::Delete("a".into())).await;
            checkpoints.send(None, put("b", &round.to_string())).await;
            checkpoints.send(None, put("a", &round.to_string())).await;
        }
        wait_for_index(&state, &entries(&[("a", "5"), ("b", "5")])).await;
        assert_eq!(*failures.borrow(), None);
    }

    #[tokio::test]
    async fn a_write_waits_for_the_event_before_it_and_a_lost_event_stops_the_writing() {
        let (state, _dir) = durable_state();
        let (mut checkpoints, mut failures) = Checkpoints::new(state.clone());
        let (sink, mut events) = EventSink::channel(4);
        let event = Arc::new(Event::new("resource-watcher", "update", json!({})));
        let tracked = sink.send_tracked(event.clone()).await.unwrap();
        checkpoints.send(Some(tracked), put("a", "1")).await;
        checkpoints.send(None, put("b", "1")).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(index(&state).await, Vec::new(), "nothing is written before the event is handled");
        events.recv().await.unwrap().answer(Handled::Fired);
        wait_for_index(&state, &entries(&[("a", "1"), ("b", "1")])).await;

        let tracked = sink.send_tracked(event).await.unwrap();
        checkpoints.send(Some(tracked), put("a", "2")).await;
        events.recv().await.unwrap().answer(Handled::NotStored("queue full".into()));
        failures.changed().await.unwrap();
        assert!(failures.borrow().as_deref().is_some_and(|reason| reason.contains("queue full")));
        // Later writes are not made: the trigger catches up from what it stored.
        checkpoints.send(None, put("c", "1")).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(index(&state).await, entries(&[("a", "1"), ("b", "1")]));
    }

    fn config_map(data: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"v": data},
            "metadata": {"name": "a", "namespace": "apps", "uid": "u-1", "resourceVersion": "7",
                "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:data": {}}}]}})
    }

    #[test]
    fn entries_keep_the_last_state_without_managed_fields() {
        let stored = Stored::of(&config_map("1"), true);
        let object = stored.object.as_ref().unwrap();
        assert!(object["metadata"].get("managedFields").is_none());
        assert_eq!(object["data"]["v"], "1");
        let decoded: Stored = serde_json::from_slice(&stored.clone().encode()).unwrap();
        assert_eq!(decoded, stored);
        assert!(Stored::of(&config_map("1"), false).object.is_none());
    }

    #[test]
    fn a_huge_object_is_stored_with_its_identity_only() {
        let stored = Stored::of(&config_map(&"x".repeat(MAX_KEPT_OBJECT_BYTES)), true);
        let bytes = stored.encode();
        assert!(bytes.len() < 200, "{} bytes", bytes.len());
        let decoded: Stored = serde_json::from_slice(&bytes).unwrap();
        assert_eq!((decoded.resource_version.as_str(), decoded.name.as_str(), decoded.object), ("7", "a", None));
    }
}
