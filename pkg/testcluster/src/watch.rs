//! Watch streams: newline-delimited JSON `WatchEvent`s, replayed from the change log and then live.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio::time::{Instant, MissedTickBehavior};

use crate::registry::ResourceDef;
use crate::shared::Shared;
use crate::status::ApiError;
use crate::store::{Change, ChangeType, Filter, partial_metadata};

/// What a watch request asked for.
pub(crate) struct WatchRequest {
    pub def: ResourceDef,
    pub version: String,
    pub filter: Filter,
    pub resource_version: Option<String>,
    pub bookmarks: bool,
    pub send_initial_events: bool,
    pub timeout: Option<Duration>,
    /// Whether objects are sent as `PartialObjectMetadata`.
    pub metadata_only: bool,
}

/// One encoded `WatchEvent` line.
fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).expect("JSON values serialize");
    line.push(b'\n');
    Bytes::from(line)
}

/// A stream holding a single ERROR event, the way the API server reports an expired resourceVersion.
pub(crate) fn error_body(error: &ApiError) -> Body {
    Body::from(event_line("ERROR", &error.to_status()))
}

/// The object as served at the requested version, or only its metadata.
fn present(req: &WatchRequest, object: &Value) -> Value {
    if req.metadata_only {
        return partial_metadata(object);
    }
    let mut object = object.clone();
    object["apiVersion"] = json!(req.def.api_version(&req.version));
    object
}

/// The event this watch sees for a change, if any: objects moving in or out of the selection
/// appear as ADDED or DELETED.
fn translate(req: &WatchRequest, change: &Change) -> Option<Bytes> {
    if change.group != req.def.group || change.plural != req.def.plural {
        return None;
    }
    let now = req.filter.matches(&change.object);
    let kind = match change.kind {
        ChangeType::Added => now.then_some("ADDED")?,
        ChangeType::Deleted => now.then_some("DELETED")?,
        ChangeType::Modified => {
            let before = change.prev.as_ref().is_some_and(|p| req.filter.matches(p));
            match (before, now) {
                (true, true) => "MODIFIED",
                (false, true) => "ADDED",
                (true, false) => "DELETED",
                (false, false) => return None,
            }
        }
    };
    Some(event_line(kind, &present(req, &change.object)))
}

fn bookmark(req: &WatchRequest, rv: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        &json!({"kind": req.def.kind, "apiVersion": req.def.api_version(&req.version), "metadata": metadata}),
    )
}

/// Counts a watch stream as open for as long as it lives.
struct OpenWatch {
    shared: Arc<Shared>,
    plural: String,
}

impl OpenWatch {
    fn new(shared: Arc<Shared>, plural: &str) -> Self {
        *shared.open_watches().entry(plural.to_string()).or_default() += 1;
        OpenWatch { shared, plural: plural.to_string() }
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        if let Some(n) = self.shared.open_watches().get_mut(&self.plural) {
            *n = n.saturating_sub(1);
        }
    }
}

/// Starts a watch: decides what to replay, then streams live changes from a background task.
pub(crate) fn start(shared: &Arc<Shared>, req: WatchRequest) -> Result<Body, ApiError> {
    let mut drops = shared.faults.subscribe_drops();
    let (initial, mut changes, start_rv) = {
        let store = shared.store();
        let rv = req.resource_version.as_deref().filter(|rv| !rv.is_empty() && *rv != "0");
        let initial: Vec<Bytes> = match rv {
            Some(rv) if !req.send_initial_events => {
                let rv: u64 =
                    rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?;
                store.changes_since(rv)?.iter().filter_map(|c| translate(&req, c)).collect()
            }
            _ => store.matching(&req.def, &req.filter).map(|o| event_line("ADDED", &present(&req, o))).collect(),
        };
        (initial, store.subscribe(), store.resource_version())
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let open = OpenWatch::new(shared.clone(), &req.def.plural);
    let shutdown = shared.shutdown.clone();
    let bookmark_interval = shared.config.bookmark_interval;
    tokio::spawn(async move {
        let _open = open;
        let plural = req.def.plural.clone();
        let mut last_rv = start_rv;
        for line in initial {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if req.send_initial_events && tx.send(bookmark(&req, last_rv, true)).await.is_err() {
            return;
        }
        let deadline = req.timeout.map(|t| Instant::now() + t);
        let mut ticker = tokio::time::interval_at(Instant::now() + bookmark_interval, bookmark_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let line = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
                _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => return,
                signal = drops.recv() => match signal {
                    Ok(resource) if resource == plural || resource == "*" => return,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = ticker.tick(), if req.bookmarks => bookmark(&req, last_rv, false),
                change = changes.recv() => match change {
                    Ok(change) => {
                        last_rv = change.rv;
                        match translate(&req, &change) {
                            Some(line) => line,
                            None => continue,
                        }
                    }
                    // A watch that fell behind ends; its client resumes from the last event it saw.
                    Err(_) => return,
                },
            };
            if tx.send(line).await.is_err() {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok::<Bytes, std::convert::Infallible>(line), rx))
    });
    Ok(Body::from_stream(stream))
}
