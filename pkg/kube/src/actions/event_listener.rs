//! kube-trigger's EventListener actions: `create-event-listener` makes a
//! `standard.oam.dev/v1alpha1` EventListener named after the source object (owned by it, with its
//! labels), and `record-event` appends the event to the EventListener named by a label of the
//! source object (or by its name), keeping the latest [`MAX_EVENTS`]. KubeVela workflows wait on
//! these records.
//!
//! Both act in the source object's namespace, as the TriggerService's identity. A record is
//! `{resource: {apiVersion, kind, name, namespace}, type, timestamp}`, the timestamp being the
//! event's time: a retried delivery finds its record already there and does not add a second one.

use std::sync::Arc;

use async_trait::async_trait;
use ktrigger_core::DestinationType;
use ktrigger_core::PropertyError;
use ktrigger_core::rfc3339;
use ktrigger_core::{BuildContext, DeliveryError, DeliveryRequest, Destination, Receipt};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ActingCluster, CONFLICT_RETRIES, FIELD_MANAGER, api_error, is_conflict, resource_path};
use crate::Cluster;

/// How many records an EventListener keeps, as kube-trigger keeps them.
pub const MAX_EVENTS: usize = 10;

/// The EventListener resource.
fn event_listeners() -> ApiResource {
    let gvk = GroupVersionKind::gvk("standard.oam.dev", "v1alpha1", "EventListener");
    ApiResource::from_gvk_with_plural(&gvk, "eventlisteners")
}

/// Creates (or updates) a standard.oam.dev/v1alpha1 EventListener named after the source object,
/// owned by it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProperties {}

/// Appends the event to an EventListener of the source object's namespace (the latest 10 are kept)
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecordProperties {
    /// {fromLabel: LABEL}: the EventListener is named by this label of the source object; default
    /// the source object's name
    #[serde(default)]
    name_selector: Option<NameSelector>,
}

/// Which EventListener a record goes to.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NameSelector {
    /// Label of the source object naming the EventListener.
    from_label: String,
}

/// Builds `create-event-listener` destinations.
#[derive(Debug, Clone)]
pub struct CreateEventListenerFactory {
    cluster: Cluster,
}

impl CreateEventListenerFactory {
    /// Destinations that act on `cluster`.
    pub fn new(cluster: Cluster) -> Self {
        CreateEventListenerFactory { cluster }
    }
}

impl DestinationType for CreateEventListenerFactory {
    type Properties = CreateProperties;
    const NAME: &'static str = "create-event-listener";
    const EXAMPLE: &'static str = "type: create-event-listener\n";

    fn build(&self, _: CreateProperties, context: &BuildContext) -> Result<Arc<dyn Destination>, PropertyError> {
        Ok(Arc::new(CreateEventListener { target: self.cluster.for_trigger(context)? }))
    }
}

/// Builds `record-event` destinations.
#[derive(Debug, Clone)]
pub struct RecordEventFactory {
    cluster: Cluster,
}

impl RecordEventFactory {
    /// Destinations that act on `cluster`.
    pub fn new(cluster: Cluster) -> Self {
        RecordEventFactory { cluster }
    }
}

impl DestinationType for RecordEventFactory {
    type Properties = RecordProperties;
    const NAME: &'static str = "record-event";
    const EXAMPLE: &'static str =
        "type: record-event\nproperties:\n  nameSelector: {fromLabel: workflowrun.oam.dev/name}\n";

    fn build(&self, props: RecordProperties, context: &BuildContext) -> Result<Arc<dyn Destination>, PropertyError> {
        if props.name_selector.as_ref().is_some_and(|s| s.from_label.is_empty()) {
            return Err(PropertyError::new("nameSelector.fromLabel", "must name a label"));
        }
        Ok(Arc::new(RecordEvent {
            from_label: props.name_selector.map(|s| s.from_label),
            target: self.cluster.for_trigger(context)?,
        }))
    }
}

/// The source object's identity: apiVersion, kind, name, namespace.
struct Source<'a> {
    api_version: &'a str,
    kind: &'a str,
    name: &'a str,
    namespace: &'a str,
}

fn source(object: &Value) -> Result<Source<'_>, DeliveryError> {
    let text = |pointer: &str| object.pointer(pointer).and_then(Value::as_str).filter(|t| !t.is_empty());
    let required = |pointer: &str, field: &str| {
        text(pointer).ok_or_else(|| DeliveryError::permanent(format!("the source object has no {field}")))
    };
    Ok(Source {
        api_version: required("/apiVersion", "apiVersion")?,
        kind: required("/kind", "kind")?,
        name: required("/metadata/name", "metadata.name")?,
        namespace: required("/metadata/namespace", "metadata.namespace (EventListeners live in namespaces)")?,
    })
}

/// A built `create-event-listener` destination.
struct CreateEventListener {
    target: ActingCluster,
}

impl CreateEventListener {
    fn listener(object: &Value) -> Result<Value, DeliveryError> {
        let source = source(object)?;
        let uid = object.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default();
        let mut metadata = json!({
            "name": source.name,
            "namespace": source.namespace,
            "ownerReferences": [{"apiVersion": source.api_version, "kind": source.kind, "name": source.name,
                                 "uid": uid, "controller": true}],
        });
        if let Some(labels) = object.pointer("/metadata/labels").filter(|l| l.is_object()) {
            metadata["labels"] = labels.clone();
        }
        Ok(json!({"apiVersion": "standard.oam.dev/v1alpha1", "kind": "EventListener", "metadata": metadata}))
    }
}

#[async_trait]
impl Destination for CreateEventListener {
    fn render(&self, request: &DeliveryRequest<'_>) -> Result<Value, DeliveryError> {
        let listener = Self::listener(&request.event.object)?;
        let (ns, name) = (listener["metadata"]["namespace"].as_str(), listener["metadata"]["name"].as_str());
        Ok(json!({"method": "PATCH (apply)", "path": resource_path(&event_listeners(), ns, name), "body": listener}))
    }

    async fn deliver(&self, request: &DeliveryRequest<'_>) -> Result<Receipt, DeliveryError> {
        let client = self.target.client()?.clone();
        let listener = Self::listener(&request.event.object)?;
        let ns = listener["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
        let name = listener["metadata"]["name"].as_str().unwrap_or_default().to_string();
        self.target.check_namespace(Some(&ns), "create EventListener")?;
        let api: Api<DynamicObject> = Api::namespaced_with(client, &ns, &event_listeners());
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch(&name, &params, &Patch::Apply(&listener))
            .await
            .map_err(|e| api_error(e, &format!("apply EventListener {ns}/{name}")))?;
        Ok(Receipt { detail: Some(format!("applied EventListener {ns}/{name}")) })
    }
}

/// A built `record-event` destination.
struct RecordEvent {
    from_label: Option<String>,
    target: ActingCluster,
}

impl RecordEvent {
    /// The namespace and name of the EventListener, and the record to append.
    fn record(&self, request: &DeliveryRequest<'_>) -> Result<(String, String, Value), DeliveryError> {
        let object = &request.event.object;
        let source = source(object)?;
        let name = match &self.from_label {
            None => source.name.to_string(),
            Some(label) => object
                .pointer("/metadata/labels")
                .and_then(|labels| labels.get(label))
                .and_then(Value::as_str)
                .filter(|name| !name.is_empty())
                .ok_or_else(|| {
                    DeliveryError::permanent(format!(
                        "properties.nameSelector.fromLabel: {} {}/{} has no label {label:?} naming its EventListener",
                        source.kind, source.namespace, source.name
                    ))
                })?
                .to_string(),
        };
        let record = json!({
            "resource": {"apiVersion": source.api_version, "kind": source.kind, "name": source.name,
                         "namespace": source.namespace},
            "type": request.event.meta.event_type,
            "timestamp": rfc3339(request.event.meta.time),
        });
        Ok((source.namespace.to_string(), name, record))
    }
}

/// `events` with `record` appended (unless a retry already added it), the latest [`MAX_EVENTS`].
fn appended(events: &[Value], record: &Value) -> Option<Vec<Value>> {
    if events.contains(record) {
        return None;
    }
    let mut all: Vec<Value> = events.to_vec();
    all.push(record.clone());
    let skip = all.len().saturating_sub(MAX_EVENTS);
    Some(all.into_iter().skip(skip).collect())
}

#[async_trait]
impl Destination for RecordEvent {
    fn render(&self, request: &DeliveryRequest<'_>) -> Result<Value, DeliveryError> {
        let (ns, name, record) = self.record(request)?;
        let path = resource_path(&event_listeners(), Some(&ns), Some(&name));
        Ok(json!({"method": "PATCH (merge, events appended)", "path": path, "body": {"append": record}}))
    }

    async fn deliver(&self, request: &DeliveryRequest<'_>) -> Result<Receipt, DeliveryError> {
        let client = self.target.client()?.clone();
        let (ns, name, record) = self.record(request)?;
        self.target.check_namespace(Some(&ns), "record an event")?;
        let api: Api<DynamicObject> = Api::namespaced_with(client, &ns, &event_listeners());
        let action = format!("record the event in EventListener {ns}/{name}");
        for _ in 0..=CONFLICT_RETRIES {
            let listener = api.get(&name).await.map_err(|e| api_error(e, &action))?;
            let events = listener.data.get("events").and_then(Value::as_array).cloned().unwrap_or_default();
            let Some(events) = appended(&events, &record) else {
                return Ok(Receipt { detail: Some(format!("event already recorded in EventListener {ns}/{name}")) });
            };
            // Guarded by the resourceVersion read: a concurrent record is not overwritten.
            let patch = json!({"metadata": {"resourceVersion": listener.metadata.resource_version}, "events": events});
            match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {
                    return Ok(Receipt { detail: Some(format!("recorded the event in EventListener {ns}/{name}")) });
                }
                Err(error) if is_conflict(&error) => continue,
                Err(error) => return Err(api_error(error, &action)),
            }
        }
        Err(DeliveryError::transient(format!("{action}: the EventListener kept changing; will retry")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktrigger_core::{DestinationFactory, Event, TriggerId, TypedDestination};

    fn trigger() -> TriggerId {
        TriggerId { namespace: "apps".into(), service: "s".into(), trigger: "t".into() }
    }

    fn deployment() -> Event {
        Event::new(
            "resource-watcher",
            "update",
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"name": "web", "namespace": "apps", "uid": "u-1",
                                "labels": {"workflowrun.oam.dev/name": "release-7"}}}),
        )
    }

    #[test]
    fn record_event_names_the_listener_by_the_label_and_records_the_resource() {
        let factory = TypedDestination::new(RecordEventFactory::new(Cluster::offline()));
        let properties = json!({"nameSelector": {"fromLabel": "workflowrun.oam.dev/name"}});
        let destination = factory.build(&properties, &BuildContext::new(trigger())).unwrap();
        let event = deployment();
        let trigger = trigger();
        let request = DeliveryRequest { id: "d-1", trigger: &trigger, event: &event, attempt: 1 };
        let rendered = destination.render(&request).unwrap();
        assert_eq!(rendered["path"], "/apis/standard.oam.dev/v1alpha1/namespaces/apps/eventlisteners/release-7");
        assert_eq!(
            rendered["body"]["append"],
            json!({"resource": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "namespace": "apps"},
                   "type": "update", "timestamp": rfc3339(event.meta.time)})
        );
    }

    #[test]
    fn a_missing_label_is_a_permanent_error_naming_it() {
        let factory = TypedDestination::new(RecordEventFactory::new(Cluster::offline()));
        let properties = json!({"nameSelector": {"fromLabel": "missing"}});
        let destination = factory.build(&properties, &BuildContext::new(trigger())).unwrap();
        let (event, trigger) = (deployment(), trigger());
        let request = DeliveryRequest { id: "d-1", trigger: &trigger, event: &event, attempt: 1 };
        let error = destination.render(&request).unwrap_err();
        assert!(error.to_string().contains("Deployment apps/web has no label \"missing\""), "{error}");
    }

    #[test]
    fn records_keep_the_latest_ten_and_a_retry_adds_nothing() {
        let records: Vec<Value> = (0..10).map(|i| json!({"n": i})).collect();
        let kept = appended(&records, &json!({"n": 10})).unwrap();
        assert_eq!(kept.len(), MAX_EVENTS);
        assert_eq!((kept[0].clone(), kept[9].clone()), (json!({"n": 1}), json!({"n": 10})));
        assert_eq!(appended(&kept, &json!({"n": 10})), None);
    }

    #[test]
    fn create_event_listener_is_owned_by_the_source_object_with_its_labels() {
        let listener = CreateEventListener::listener(&deployment().object).unwrap();
        assert_eq!(listener["metadata"]["name"], "web");
        assert_eq!(listener["metadata"]["labels"], json!({"workflowrun.oam.dev/name": "release-7"}));
        assert_eq!(
            listener["metadata"]["ownerReferences"],
            json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "u-1", "controller": true}])
        );
    }
}
