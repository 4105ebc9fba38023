//! The `k8s-events` source: Kubernetes Events (core/v1 or events.k8s.io/v1), filtered by type,
//! reason and involved kind, and named by presets (pod-restart, oom-kill, ...).
//!
//! Every k8s-events trigger on the same API and namespace shares one watch; the filters run on
//! the events as they arrive. An Event fires when it appears and again each time its occurrence
//! count (`count`, `series.count`) grows, so a crash loop keeps being reported. With a state
//! store, a trigger remembers the count of each Event it saw: after a restart an Event that
//! repeated meanwhile fires once, one that did not stays quiet.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ktrigger_core::{
    BuildContext, EventMappings, EventSink, PropertyError, Source, SourceError, SourceState, SourceType, TriggerId,
    stable_id,
};
use kube::api::ApiResource;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::hub::{Change, ChangeKind, EventShape, Interest, Subscriber, WatchKey, occurrences, uid_of};
use crate::position::Position;
use crate::presets::{self, MappingSpec, Preset};
use crate::selector::ObjectSelector;
use crate::{Cluster, Identity, Slot, run_subscribed};

/// The source type name.
pub const NAME: &str = "k8s-events";

/// Kubernetes Events (core/v1 or events.k8s.io/v1), with presets such as pod-restart and
/// oom-kill.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct K8sEventsProperties {
    /// v1 (default) or events.k8s.io/v1: which Event API to watch. Either way `object` has both
    /// spellings of the renamed fields (involvedObject/regarding, message/note) and `count`, the
    /// occurrence count (count, series.count or deprecatedCount; at least 1).
    #[serde(default)]
    api_version: Option<String>,
    /// Namespace to watch; absent for all (in the controller, the TriggerService's own namespace
    /// when it has no identity).
    #[serde(default)]
    namespace: Option<String>,
    /// Event types to keep: Warning, Normal; default both.
    #[serde(default)]
    types: Vec<String>,
    /// Reasons to keep (e.g. BackOff); default all.
    #[serde(default)]
    reasons: Vec<String>,
    /// Kinds of the object the Event is about (e.g. Pod, Node); default all.
    #[serde(default)]
    involved_kinds: Vec<String>,
    /// Keep only Events of these presets; `event.preset` names the first that matched.
    /// Built-in: pod-restart, oom-kill, pod-pending, probe-failed, node-not-ready,
    /// image-pull-backoff; custom ones come from `mappings` or --event-mappings. Default: every
    /// Event, without a preset.
    #[serde(default)]
    presets: Vec<String>,
    /// Custom presets of this trigger: [{name, condition}], condition being CEL over `object`
    /// (the Event); a custom name equal to a built-in replaces it.
    #[serde(default)]
    mappings: Vec<MappingSpec>,
    /// Report Events that exist when the trigger starts; default false. With a state store,
    /// only on the trigger's first start: later starts report what happened while it was not
    /// running.
    #[serde(default)]
    replay_existing: bool,
}

/// The Event resource of `api_version`.
fn event_resource(api_version: Option<&str>) -> Result<ApiResource, PropertyError> {
    let (group, version) = match api_version.unwrap_or("v1") {
        "v1" => ("", "v1"),
        "events.k8s.io/v1" => ("events.k8s.io", "v1"),
        other => return Err(PropertyError::new("apiVersion", format!("{other:?} is not v1 or events.k8s.io/v1"))),
    };
    let api_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Ok(ApiResource {
        group: group.into(),
        version: version.into(),
        api_version,
        kind: "Event".into(),
        plural: "events".into(),
    })
}

/// Builds `k8s-events` sources on one cluster.
#[derive(Debug, Clone)]
pub struct K8sEventsFactory {
    cluster: Cluster,
}

impl K8sEventsFactory {
    /// Sources that watch `cluster`, with its custom presets.
    pub fn new(cluster: Cluster) -> Self {
        K8sEventsFactory { cluster }
    }
}

impl SourceType for K8sEventsFactory {
    type Properties = K8sEventsProperties;
    const NAME: &'static str = NAME;
    const EXAMPLE: &'static str = "source:
  type: k8s-events
  properties:
    namespace: apps
    presets: [pod-restart, oom-kill]
";

    fn build(&self, props: K8sEventsProperties, context: &BuildContext) -> Result<Arc<dyn Source>, PropertyError> {
        let resource = event_resource(props.api_version.as_deref())?;
        for (i, t) in props.types.iter().enumerate() {
            if !t.eq_ignore_ascii_case("warning") && !t.eq_ignore_ascii_case("normal") {
                return Err(PropertyError::new(format!("types[{i}]"), format!("{t:?} is not Warning or Normal")));
            }
        }
        let own = presets::compile_mappings(&props.mappings).map_err(|e| PropertyError::new("mappings", e))?;
        let presets = presets::resolve(&props.presets, &own, self.cluster.mappings())
            .map_err(|e| PropertyError::new("presets", e))?;
        let (actor, namespace) = self.cluster.scope(context, props.namespace)?;
        self.cluster.check_available()?;
        let lower = |list: &[String]| list.iter().map(|s| s.to_lowercase()).collect::<Vec<_>>();
        let interest = EventsInterest {
            types: lower(&props.types),
            reasons: lower(&props.reasons),
            kinds: lower(&props.involved_kinds),
            presets: presets.into_iter().map(|p| (Arc::from(p.name()), p)).collect(),
            mappings: self.cluster.event_mappings().clone(),
        };
        Ok(Arc::new(K8sEvents {
            cluster: self.cluster.clone(),
            trigger: context.trigger.clone(),
            resource,
            identity: actor.identity,
            namespace,
            interest: Arc::new(interest),
            needs_old: context.needs.old_object,
            replay_existing: props.replay_existing,
            state: context.state.clone(),
            slot: Slot::default(),
        }))
    }
}

/// One trigger's filters and presets.
struct EventsInterest {
    types: Vec<String>,
    reasons: Vec<String>,
    kinds: Vec<String>,
    presets: Vec<(Arc<str>, Preset)>,
    mappings: Arc<EventMappings>,
}

impl Interest for Arc<EventsInterest> {
    fn shape(&self, change: &Change) -> Option<EventShape> {
        let event_type = match change.kind {
            ChangeKind::Create => "create",
            // A repeat: fire again only when it happened again, not for other edits.
            ChangeKind::Update if occurrences(&change.object) > change.old_occurrences.unwrap_or(u64::MAX) => "update",
            ChangeKind::Update | ChangeKind::Delete => return None,
        };
        let event = change.derived(normalize);
        let text = |field: &str| event[field].as_str().unwrap_or("").to_lowercase();
        let keeps = |list: &[String], value: String| list.is_empty() || list.contains(&value);
        if !keeps(&self.types, text("type"))
            || !keeps(&self.reasons, text("reason"))
            || !keeps(&self.kinds, event["involvedObject"]["kind"].as_str().unwrap_or("").to_lowercase())
        {
            return None;
        }
        let preset = if self.presets.is_empty() {
            None
        } else {
            Some(self.presets.iter().find(|(_, preset)| preset.matches(event))?.0.clone())
        };
        let id = stable_id(&[&uid_of(&change.object), &occurrences(&change.object).to_string()]);
        let annotation = preset.as_deref().and_then(|preset| self.mappings.find(NAME, preset));
        let time = occurrence_time(event);
        Some(EventShape { source: NAME, event_type, preset, derived: true, time, id, annotation })
    }
}

/// The Event with both spellings of the fields events.k8s.io/v1 renamed, and `count`.
pub fn normalize(event: &Value) -> Value {
    let mut out = event.clone();
    if let Some(map) = out.as_object_mut() {
        alias(map, "involvedObject", "regarding");
        alias(map, "message", "note");
        map.insert("count".into(), json!(occurrences(event)));
    }
    out
}

fn alias(map: &mut Map<String, Value>, a: &str, b: &str) {
    match (map.get(a).filter(|v| !v.is_null()).cloned(), map.get(b).filter(|v| !v.is_null()).cloned()) {
        (Some(value), None) => {
            map.insert(b.into(), value);
        }
        (None, Some(value)) => {
            map.insert(a.into(), value);
        }
        _ => {}
    }
}

/// When the Event last happened: the latest sighting of a series, `lastTimestamp` of legacy
/// Events, then `eventTime`, the first sighting, and the creation time.
pub fn occurrence_time(event: &Value) -> Option<DateTime<Utc>> {
    [
        &event["series"]["lastObservedTime"],
        &event["lastTimestamp"],
        &event["deprecatedLastTimestamp"],
        &event["eventTime"],
        &event["firstTimestamp"],
        &event["deprecatedFirstTimestamp"],
        &event["metadata"]["creationTimestamp"],
    ]
    .iter()
    .filter_map(|v| v.as_str())
    .find_map(|text| DateTime::parse_from_rfc3339(text).ok())
    .map(|time| time.with_timezone(&Utc))
}

struct K8sEvents {
    cluster: Cluster,
    trigger: TriggerId,
    resource: ApiResource,
    identity: Identity,
    namespace: Option<String>,
    interest: Arc<EventsInterest>,
    needs_old: bool,
    replay_existing: bool,
    state: SourceState,
    slot: Slot,
}

#[async_trait]
impl Source for K8sEvents {
    async fn run(&self, sink: EventSink, cancel: CancellationToken) -> Result<(), SourceError> {
        let client = self.cluster.client()?;
        let subscribe = async {
            let key = WatchKey {
                resource: self.resource.clone(),
                namespace: self.namespace.clone(),
                fields: String::new(),
                identity: self.identity.clone(),
            };
            // Per Event its uid, resourceVersion and occurrence count: what tells a repeat.
            let position = Position::load(self.state.clone(), key.scope().to_string(), false).await?;
            let subscriber = Subscriber {
                trigger: self.trigger.clone(),
                sink,
                interest: Box::new(self.interest.clone()),
                selector: ObjectSelector::default(),
                needs_old: self.needs_old,
                replay_existing: self.replay_existing,
                position,
            };
            self.cluster.subscribe(&client, key, subscriber).await
        };
        run_subscribed(&self.cluster, &self.slot, Box::pin(subscribe), &cancel).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktrigger_core::{SourceFactory, TypedSource, parse_properties};

    fn context() -> BuildContext {
        BuildContext::new(TriggerId { namespace: String::new(), service: "s".into(), trigger: "t".into() })
    }

    fn interest(properties: Value) -> Arc<EventsInterest> {
        let props: K8sEventsProperties = parse_properties(&properties).unwrap();
        let presets =
            presets::resolve(&props.presets, &presets::compile_mappings(&props.mappings).unwrap(), &[]).unwrap();
        Arc::new(EventsInterest {
            types: props.types.iter().map(|s| s.to_lowercase()).collect(),
            reasons: props.reasons.iter().map(|s| s.to_lowercase()).collect(),
            kinds: props.involved_kinds.iter().map(|s| s.to_lowercase()).collect(),
            presets: presets.into_iter().map(|p| (Arc::from(p.name()), p)).collect(),
            mappings: Arc::default(),
        })
    }

    fn backoff(count: u64) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "web-1.17a", "namespace": "apps", "creationTimestamp": "2026-01-01T10:00:00Z"},
            "involvedObject": {"kind": "Pod", "name": "web-1", "namespace": "apps"},
            "type": "Warning", "reason": "BackOff", "message": "Back-off restarting failed container app",
            "count": count, "firstTimestamp": "2026-01-01T10:00:00Z",
            "lastTimestamp": format!("2026-01-01T10:{:02}:00Z", count),
        })
    }

    fn update(object: Value, old_count: u64) -> Change {
        let mut change = Change::new(ChangeKind::Update, object);
        change.old_occurrences = Some(old_count);
        change
    }

    #[test]
    fn properties_are_checked_at_load_without_a_cluster() {
        let factory = TypedSource::new(K8sEventsFactory::new(Cluster::offline()));
        let ok = json!({"namespace": "apps", "types": ["Warning"], "reasons": ["BackOff"], "involvedKinds": ["Pod"],
            "presets": ["pod-restart", "mine"], "mappings": [{"name": "mine", "condition": "object.count > 3"}]});
        assert!(factory.build(&ok, &context()).is_ok());
        for (properties, expected) in [
            (json!({"presets": ["pod-restarts"]}), "properties.presets: unknown preset \"pod-restarts\""),
            (json!({"types": ["Error"]}), "properties.types[0]"),
            (json!({"apiVersion": "events/v2"}), "properties.apiVersion"),
            (
                json!({"mappings": [{"name": "m", "condition": "object.reason =="}]}),
                "properties.mappings: mapping \"m\"",
            ),
        ] {
            let error = factory.build(&properties, &context()).err().unwrap().to_string();
            assert!(error.contains(expected), "{properties}: {error}");
        }
    }

    #[test]
    fn a_repeat_fires_again_only_when_the_count_grows() {
        let interest = interest(json!({"presets": ["pod-restart"]}));
        let first = interest.shape(&Change::new(ChangeKind::Create, backoff(1))).unwrap();
        assert_eq!((first.event_type, first.preset.as_deref()), ("create", Some("pod-restart")));
        let repeat = interest.shape(&update(backoff(2), 1)).unwrap();
        assert_eq!(repeat.event_type, "update");
        // Legacy Events are timed by lastTimestamp, not by their creation.
        assert_eq!(repeat.time.unwrap().to_rfc3339(), "2026-01-01T10:02:00+00:00");
        assert!(interest.shape(&update(backoff(2), 2)).is_none(), "an edit that is not a repeat");
        assert!(interest.shape(&Change::new(ChangeKind::Delete, backoff(2))).is_none());
    }

    #[test]
    fn series_counts_of_events_k8s_io_are_repeats_too() {
        let interest = interest(json!({"presets": ["probe-failed"]}));
        let event = |count: u64| {
            json!({"regarding": {"kind": "Pod", "name": "api-0"}, "type": "Warning", "reason": "Unhealthy",
                   "note": "Readiness probe failed: connection refused", "eventTime": "2026-01-01T09:00:00.000000Z",
                   "series": {"count": count, "lastObservedTime": "2026-01-01T09:30:00.000000Z"}})
        };
        let change = update(event(5), 4);
        let shape = interest.shape(&change).unwrap();
        assert_eq!(shape.preset.as_deref(), Some("probe-failed"));
        assert_eq!(shape.time.unwrap().to_rfc3339(), "2026-01-01T09:30:00+00:00");
        let object = change.derived(normalize);
        assert_eq!(object["involvedObject"]["name"], "api-0");
        assert_eq!(object["message"], "Readiness probe failed: connection refused");
        assert_eq!(object["count"], 5);
    }

    #[test]
    fn khook_mappings_give_preset_events_their_severity_and_tags() {
        let entries = serde_json::from_value(json!([
            {"eventSource": "kubernetes", "eventType": "pod-restart", "internalType": "PodRestart",
             "severity": "warning", "tags": {"category": "lifecycle"}, "enabled": true}
        ]))
        .unwrap();
        let mut interest = Arc::into_inner(interest(json!({"presets": ["pod-restart"]}))).unwrap();
        interest.mappings = Arc::new(EventMappings::new(entries).unwrap());
        let shape = Arc::new(interest).shape(&Change::new(ChangeKind::Create, backoff(1))).unwrap();
        let annotation = shape.annotation.unwrap();
        assert_eq!(annotation.severity.as_deref(), Some("warning"));
        assert_eq!(annotation.tags, Some(json!({"category": "lifecycle"})));
    }

    #[test]
    fn type_reason_and_kind_filters_apply_before_presets() {
        let warning_pods = interest(json!({"types": ["warning"], "involvedKinds": ["Pod"]}));
        assert!(warning_pods.shape(&Change::new(ChangeKind::Create, backoff(1))).unwrap().preset.is_none());
        let mut normal = backoff(1);
        normal["type"] = json!("Normal");
        assert!(warning_pods.shape(&Change::new(ChangeKind::Create, normal)).is_none());
        let other_reason = interest(json!({"reasons": ["FailedScheduling"]}));
        assert!(other_reason.shape(&Change::new(ChangeKind::Create, backoff(1))).is_none());
        let oom_only = interest(json!({"presets": ["oom-kill"]}));
        assert!(oom_only.shape(&Change::new(ChangeKind::Create, backoff(1))).is_none());
    }

    #[test]
    fn custom_mappings_name_the_event() {
        let interest = interest(json!({"presets": ["crash-storm"],
            "mappings": [{"name": "crash-storm", "condition": "object.reason == 'BackOff' && object.count >= 3"}]}));
        assert!(interest.shape(&Change::new(ChangeKind::Create, backoff(2))).is_none());
        assert_eq!(interest.shape(&update(backoff(3), 2)).unwrap().preset.as_deref(), Some("crash-storm"));
    }
}
