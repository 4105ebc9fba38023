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

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use ktrigger_core::{Handled, SourceState, Tracked};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

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

/// Where a watch sends a trigger's index writes, in order.
pub(crate) struct Checkpoints {
    /// Boxed writes: a channel allocates room for 32 of its items at once, per trigger.
    queue: mpsc::Sender<Box<(Option<Tracked>, Write)>>,
    failed: watch::Sender<Option<String>>,
}

impl Checkpoints {
    /// Starts the writer of `state`; the receiver learns why writing stopped, if it does.
    pub(crate) fn start(state: SourceState) -> (Checkpoints, watch::Receiver<Option<String>>) {
        let (queue, writes) = mpsc::channel(WRITE_QUEUE);
        let (failed, failures) = watch::channel(None);
        tokio::spawn(write_in_order(state, writes, failed.clone()));
        (Checkpoints { queue, failed }, failures)
    }

    /// Queues `write`, to be made once `tracked` (if any) is handled.
    pub(crate) async fn send(&self, tracked: Option<Tracked>, write: Write) {
        // A writer that stopped has reported why; the trigger resubscribes and catches up.
        let _ = self.queue.send(Box::new((tracked, write))).await;
    }

    /// Stops the writing: the trigger cannot be brought up to date now.
    pub(crate) fn fail(&self, reason: String) {
        self.failed.send_replace(Some(reason));
    }
}

async fn write_in_order(
    state: SourceState,
    mut writes: mpsc::Receiver<Box<(Option<Tracked>, Write)>>,
    failed: watch::Sender<Option<String>>,
) {
    let mut commits = FuturesOrdered::new();
    loop {
        tokio::select! {
            Some(result) = commits.next(), if !commits.is_empty() => {
                if let Err(error) = result {
                    failed.send_replace(Some(format!("cannot store the watch position: {error}")));
                    return;
                }
            }
            next = writes.recv(), if commits.len() < IN_FLIGHT => {
                let Some(next) = next else { break };
                let (tracked, write) = *next;
                if let Some(tracked) = tracked
                    && let Handled::NotStored(reason) = tracked.handled().await
                {
                    failed.send_replace(Some(format!("an event was not stored ({reason}); catching up")));
                    return;
                }
                let commit = match write {
                    Write::Reset(scope) => {
                        // Removed first and waited for, so that no entry of the new index is lost
                        // to a removal applied after it.
                        if let Err(error) = state.clear().wait().await {
                            failed.send_replace(Some(format!("cannot store the watch position: {error}")));
                            return;
                        }
                        state.put(SCOPE_KEY, scope.into_bytes())
                    }
                    Write::Put(uid, stored) => state.put(&format!("{OBJECT_PREFIX}{uid}"), stored.encode()),
                    Write::Delete(uid) => state.delete(&format!("{OBJECT_PREFIX}{uid}")),
                };
                commits.push_back(commit.wait());
            }
        }
    }
    while let Some(result) = commits.next().await {
        if let Err(error) = result {
            failed.send_replace(Some(format!("cannot store the watch position: {error}")));
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
