//! The `create-event` destination: a core/v1 Event about the source object or a named object, so
//! that `kubectl describe` and event exporters show what a trigger saw.
//!
//! The Event goes in the involved object's namespace (the API server requires it; `default` for
//! cluster-scoped objects). Its name is `<object>.<hex>` with the hex taken from the delivery id,
//! so a retried delivery finds its Event already there instead of creating a second one.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use k8s_openapi::api::core::v1::Event as KubeEvent;
use ktrigger_core::DestinationType;
use ktrigger_core::PropertyError;
use ktrigger_core::rfc3339;
use ktrigger_core::{BuildContext, DeliveryError, DeliveryRequest, Destination, Receipt};
use ktrigger_core::{Template, TemplateScope};
use kube::api::{Api, PostParams};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    ActingCluster, FIELD_MANAGER, api_error, compile_optional, default_namespace, delivery_suffix, is_conflict,
    render_text,
};
use crate::Cluster;

/// Longest message kept; longer ones are cut (events.k8s.io allows 1 KiB notes).
const MAX_MESSAGE: usize = 1024;

/// Records a Kubernetes Event on the source object or a named object
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventProperties {
    /// {apiVersion, kind, name, namespace} (templates) of the object the Event is about; default
    /// the source object. A missing namespace is the TriggerService's for namespaced kinds
    #[serde(default)]
    involved_object: Option<ObjectProperties>,
    /// Short CamelCase reason; default Triggered
    #[serde(default)]
    reason: Option<String>,
    /// Normal (default) or Warning
    #[serde(default, rename = "type")]
    event_type: Option<String>,
    /// Template of the message (cut at 1024 characters); default names the trigger and the event
    /// type
    #[serde(default)]
    message: Option<String>,
    /// What was done or is to be done, e.g. Notified
    #[serde(default)]
    action: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ObjectProperties {
    api_version: String,
    kind: String,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

/// A named involved object, each field a template.
struct NamedObject {
    api_version: Template,
    kind: Template,
    name: Template,
    namespace: Option<Template>,
}

/// Builds `create-event` destinations.
#[derive(Debug, Clone)]
pub struct CreateEventFactory {
    cluster: Cluster,
}

impl CreateEventFactory {
    /// Destinations that act on `cluster`.
    pub fn new(cluster: Cluster) -> Self {
        CreateEventFactory { cluster }
    }
}

impl DestinationType for CreateEventFactory {
    type Properties = EventProperties;
    const NAME: &'static str = "create-event";
    const EXAMPLE: &'static str = r#"type: create-event
properties:
  reason: ConfigChanged
  type: Warning
  message: "ConfigMap {{ object.metadata.name }} changed ({{ event.type }})"
"#;

    fn build(&self, props: EventProperties, context: &BuildContext) -> Result<Arc<dyn Destination>, PropertyError> {
        let event_type = props.event_type.unwrap_or_else(|| "Normal".into());
        if !matches!(event_type.as_str(), "Normal" | "Warning") {
            return Err(PropertyError::new("type", format!("must be Normal or Warning, not {event_type:?}")));
        }
        let reason = props.reason.unwrap_or_else(|| "Triggered".into());
        if reason.is_empty() || reason.len() > 128 || !reason.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(PropertyError::new(
                "reason",
                format!("must be 1 to 128 letters and digits (CamelCase), not {reason:?}"),
            ));
        }
        let involved = match props.involved_object {
            None => None,
            Some(object) => {
                let compile = |name: &str, source: &str| {
                    Template::compile(source).map_err(|e| PropertyError::new(format!("involvedObject.{name}"), e))
                };
                Some(NamedObject {
                    api_version: compile("apiVersion", &object.api_version)?,
                    kind: compile("kind", &object.kind)?,
                    name: compile("name", &object.name)?,
                    namespace: object.namespace.as_deref().map(|ns| compile("namespace", ns)).transpose()?,
                })
            }
        };
        Ok(Arc::new(CreateEvent {
            involved,
            reason,
            event_type,
            message: compile_optional("message", props.message.as_deref())?,
            action: props.action,
            trigger: context.trigger.to_string(),
            trigger_namespace: context.trigger.namespace.clone(),
            target: self.cluster.for_trigger(context)?,
        }))
    }
}

/// A built `create-event` destination.
struct CreateEvent {
    involved: Option<NamedObject>,
    reason: String,
    event_type: String,
    message: Option<Template>,
    action: Option<String>,
    trigger: String,
    trigger_namespace: String,
    target: ActingCluster,
}

impl CreateEvent {
    /// The involved object reference; `namespace` is `None` when it still has to be decided by
    /// whether the kind is namespaced.
    fn involved(
        &self,
        request: &DeliveryRequest<'_>,
        scope: &TemplateScope,
    ) -> Result<(Map<String, Value>, Option<String>), DeliveryError> {
        let object = &request.event.object;
        let mut reference = Map::new();
        let Some(named) = &self.involved else {
            let text = |pointer: &str| object.pointer(pointer).and_then(Value::as_str).filter(|t| !t.is_empty());
            let name = text("/metadata/name").ok_or_else(|| {
                DeliveryError::permanent("the source object has no metadata.name to record an Event on")
            })?;
            for (field, pointer) in [
                ("apiVersion", "/apiVersion"),
                ("kind", "/kind"),
                ("uid", "/metadata/uid"),
                ("resourceVersion", "/metadata/resourceVersion"),
            ] {
                if let Some(value) = text(pointer) {
                    reference.insert(field.into(), json!(value));
                }
            }
            reference.insert("name".into(), json!(name));
            let namespace = text("/metadata/namespace").unwrap_or_default().to_string();
            return Ok((reference, Some(namespace)));
        };
        let field = |name: &str, template: &Template| {
            render_text(&format!("involvedObject.{name}"), template, scope).map(|t| t.trim().to_string())
        };
        for (name, template) in [("apiVersion", &named.api_version), ("kind", &named.kind), ("name", &named.name)] {
            let value = field(name, template)?;
            if value.is_empty() {
                return Err(DeliveryError::permanent(format!("properties.involvedObject.{name}: rendered empty")));
            }
            reference.insert(name.into(), json!(value));
        }
        let namespace = named.namespace.as_ref().map(|t| field("namespace", t)).transpose()?;
        Ok((reference, namespace))
    }

    fn event(
        &self,
        request: &DeliveryRequest<'_>,
        mut reference: Map<String, Value>,
        namespace: &str,
    ) -> Result<Value, DeliveryError> {
        let scope = request.scope();
        let mut message = match &self.message {
            Some(template) => render_text("message", template, &scope)?,
            None => format!("trigger {} fired on a {} event", self.trigger, request.event.meta.event_type),
        };
        if let Some((cut, _)) = message.char_indices().nth(MAX_MESSAGE) {
            message.truncate(cut);
        }
        if !namespace.is_empty() {
            reference.insert("namespace".into(), json!(namespace));
        }
        let object_name = reference.get("name").and_then(Value::as_str).unwrap_or("event");
        let suffix = delivery_suffix(request.id, 16);
        let prefix: String = object_name.chars().take(253 - suffix.len() - 1).collect();
        let now = rfc3339(Utc::now());
        let mut event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": format!("{prefix}.{suffix}"),
                "namespace": if namespace.is_empty() { "default" } else { namespace },
                "annotations": {"ktrigger.dev/trigger": self.trigger, "ktrigger.dev/delivery-id": request.id},
            },
            "involvedObject": reference,
            "reason": self.reason,
            "message": message,
            "type": self.event_type,
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": FIELD_MANAGER,
        });
        if let Some(action) = &self.action {
            event["action"] = json!(action);
        }
        Ok(event)
    }
}

#[async_trait]
impl Destination for CreateEvent {
    fn render(&self, request: &DeliveryRequest<'_>) -> Result<Value, DeliveryError> {
        let scope = request.scope();
        let (reference, namespace) = self.involved(request, &scope)?;
        let namespace = namespace.unwrap_or_else(|| default_namespace(&self.trigger_namespace, &request.event.object));
        let event = self.event(request, reference, &namespace)?;
        let ns = event["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
        Ok(json!({"method": "POST", "path": format!("/api/v1/namespaces/{ns}/events"), "body": event}))
    }

    async fn deliver(&self, request: &DeliveryRequest<'_>) -> Result<Receipt, DeliveryError> {
        let client = self.target.client()?;
        let scope = request.scope();
        let (reference, namespace) = self.involved(request, &scope)?;
        let namespace = match namespace {
            Some(namespace) => namespace,
            None => {
                // A named object without a namespace: its kind decides (Nodes have none).
                let api_version = reference.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
                let kind = reference.get("kind").and_then(Value::as_str).unwrap_or_default();
                match self.target.resolve(api_version, kind).await {
                    Ok(resolved) if !resolved.namespaced => String::new(),
                    _ => default_namespace(&self.trigger_namespace, &request.event.object),
                }
            }
        };
        let body = self.event(request, reference, &namespace)?;
        let event: KubeEvent = serde_json::from_value(body)
            .map_err(|e| DeliveryError::permanent(format!("cannot build the Event: {e}")))?;
        let ns = event.metadata.namespace.clone().unwrap_or_default();
        let name = event.metadata.name.clone().unwrap_or_default();
        self.target.check_namespace(Some(&ns), "create Event")?;
        let api: Api<KubeEvent> = Api::namespaced(client.clone(), &ns);
        let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
        match api.create(&params, &event).await {
            Ok(_) => Ok(Receipt { detail: Some(format!("created Event {ns}/{name}")) }),
            // The name comes from the delivery id: an earlier attempt of this delivery created it.
            Err(error) if is_conflict(&error) => {
                Ok(Receipt { detail: Some(format!("Event {ns}/{name} already created by an earlier attempt")) })
            }
            Err(error) => Err(api_error(error, &format!("create Event in {ns}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktrigger_core::{DestinationFactory, Event, TriggerId, TypedDestination};

    fn trigger() -> TriggerId {
        TriggerId { namespace: "apps".into(), service: "s".into(), trigger: "t".into() }
    }

    fn build(properties: Value) -> Result<Arc<dyn Destination>, String> {
        TypedDestination::new(CreateEventFactory::new(Cluster::offline()))
            .build(&properties, &BuildContext::new(trigger()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn type_and_reason_are_checked_at_load() {
        let err = build(json!({"type": "Error"})).err().unwrap();
        assert_eq!(err, "properties.type: must be Normal or Warning, not \"Error\"");
        let err = build(json!({"reason": "not ok"})).err().unwrap();
        assert!(err.starts_with("properties.reason: must be 1 to 128 letters"), "{err}");
        let err = build(json!({"involvedObject": {"kind": "Node", "name": "n"}})).err().unwrap();
        assert!(err.contains("missing field `apiVersion`"), "{err}");
    }

    #[test]
    fn dry_run_shows_the_event_on_the_source_object() {
        let destination = build(json!({"message": "saw {{ object.metadata.name }}", "reason": "Seen"})).unwrap();
        let trigger = trigger();
        let event = Event::new(
            "resource-watcher",
            "update",
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1", "namespace": "shop", "uid": "u-1"}}),
        );
        let request = DeliveryRequest { id: "d-1", trigger: &trigger, event: &event, attempt: 1 };
        let rendered = destination.render(&request).unwrap();
        assert_eq!(rendered["path"], "/api/v1/namespaces/shop/events");
        let body = &rendered["body"];
        assert_eq!(
            body["involvedObject"],
            json!({"apiVersion": "v1", "kind": "Pod", "name": "web-1", "namespace": "shop", "uid": "u-1"})
        );
        assert_eq!(body["metadata"]["name"], format!("web-1.{}", delivery_suffix("d-1", 16)));
        assert_eq!((body["message"].as_str(), body["reason"].as_str()), (Some("saw web-1"), Some("Seen")));
        assert_eq!(body["type"], "Normal");
        assert_eq!(body["reportingComponent"], "ktrigger");
        assert_eq!(destination.render(&request).unwrap()["body"]["metadata"]["name"], body["metadata"]["name"]);
    }
}
