//! The event context every filter, template and destination sees (DESIGN.md section 3).

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Identifies one trigger: the TriggerService it belongs to and its own name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TriggerId {
    /// Namespace of the TriggerService; empty for local files without one.
    pub namespace: String,
    /// Name of the TriggerService.
    pub service: String,
    /// Name of the trigger.
    pub trigger: String,
}

impl fmt::Display for TriggerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{}", self.service, self.trigger)
        } else {
            write!(f, "{}/{}/{}", self.namespace, self.service, self.trigger)
        }
    }
}

/// What happened, apart from the object itself: the `event` variable of filters and templates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventMeta {
    /// `create`/`update`/`delete` for resources; `fire`, `poll`, `receive` for other sources.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The source type that produced the event.
    pub source: String,
    /// When the event happened.
    pub time: DateTime<Utc>,
    /// Id of the event: deterministic where the source can make it so (see [`stable_id`]), so
    /// that the same change seen again after a restart has the same id.
    pub id: String,
    /// The preset that recognised the event (k8s-events sources).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// The cluster the event came from, when there are several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// The severity an event mapping gave events of this kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// The tags (a map or a list of strings) an event mapping gave events of this kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Value>,
}

/// One event, built once by its source and shared (behind an `Arc`) by every trigger that sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The new object, Event object, poll item, webhook payload or cron fire record.
    pub object: Value,
    /// The previous object on updates, only kept when a trigger asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_object: Option<Value>,
    /// Type, source, time, id and optional preset, cluster, severity and tags.
    pub meta: EventMeta,
}

/// A shared, immutable event.
pub type SharedEvent = Arc<Event>;

impl Event {
    /// A new event of `event_type` from `source`, stamped now with a fresh id.
    pub fn new(source: &str, event_type: &str, object: Value) -> Self {
        Event {
            object,
            old_object: None,
            meta: EventMeta {
                event_type: event_type.to_string(),
                source: source.to_string(),
                time: Utc::now(),
                id: uuid::Uuid::new_v4().to_string(),
                preset: None,
                cluster: None,
                severity: None,
                tags: None,
            },
        }
    }

    /// The same event with the id `id`.
    pub fn with_id(mut self, id: String) -> Self {
        self.meta.id = id;
        self
    }

    /// The `event` variable as seen by `trigger`.
    pub fn event_value(&self, trigger: &str) -> Value {
        let mut value = json!({
            "type": self.meta.event_type,
            "source": self.meta.source,
            "trigger": trigger,
            "time": rfc3339(self.meta.time),
            "id": self.meta.id,
        });
        if let Some(preset) = &self.meta.preset {
            value["preset"] = json!(preset);
        }
        if let Some(cluster) = &self.meta.cluster {
            value["cluster"] = json!(cluster);
        }
        if let Some(severity) = &self.meta.severity {
            value["severity"] = json!(severity);
        }
        if let Some(tags) = &self.meta.tags {
            value["tags"] = tags.clone();
        }
        value
    }

    /// The whole context (`object`, `oldObject`, `event`, `context`, `now`) as one JSON value,
    /// for templates and dry-run output. Filters do not use this: they bind the parts lazily.
    pub fn context_value(&self, trigger: &str, now: DateTime<Utc>) -> Value {
        json!({
            "object": self.object,
            "oldObject": self.old_object,
            "event": self.event_value(trigger),
            "context": {
                "sourceType": self.meta.source,
                "event": self.meta.event_type,
                "data": self.object,
                "timestamp": rfc3339(self.meta.time),
            },
            "now": rfc3339(now),
        })
    }
}

/// Namespace of the name-based UUIDs of [`stable_id`].
const STABLE_ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6b74_7269_6767_6572_8000_0000_0000_0001);

/// A deterministic id made of `parts` (e.g. an object's uid, resourceVersion and change type):
/// a name-based UUID, equal for equal parts, so a retry, a restart or a failover reproduces it.
pub fn stable_id(parts: &[&str]) -> String {
    let mut name = Vec::new();
    for part in parts {
        // Length-prefixed, so ("a/b", "c") and ("a", "b/c") differ.
        name.extend_from_slice(&(part.len() as u64).to_be_bytes());
        name.extend_from_slice(part.as_bytes());
    }
    uuid::Uuid::new_v5(&STABLE_ID_NAMESPACE, &name).to_string()
}

/// Formats a time the way Kubernetes does (RFC 3339, UTC, `Z`).
pub fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The names every filter and template may refer to.
pub const CONTEXT_NAMES: [&str; 5] = ["object", "oldObject", "event", "context", "now"];
