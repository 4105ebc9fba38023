//! The `patch-resource` destination: a merge, JSON, strategic or server-side apply patch on any
//! object the cluster serves, by default the source object itself.

use std::sync::Arc;

use async_trait::async_trait;
use ktrigger_core::DestinationType;
use ktrigger_core::PropertyError;
use ktrigger_core::{BuildContext, DeliveryError, DeliveryRequest, Destination, Receipt};
use ktrigger_core::{Template, TemplateScope};
use kube::api::{ApiResource, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::core::gvk::GroupVersion;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    ActingCluster, FIELD_MANAGER, ValueTemplate, api_error, compile_optional, default_namespace, object_name,
    object_namespace, render_text, resource_path,
};
use crate::Cluster;

/// Patches a Kubernetes object (merge, JSON, strategic or server-side apply), by default the source
/// object
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatchProperties {
    /// Template of the target's apiVersion; default the source object's
    #[serde(default)]
    api_version: Option<String>,
    /// Template of the target's kind; default the source object's
    #[serde(default)]
    kind: Option<String>,
    /// Template of the target's name; default the source object's
    #[serde(default)]
    name: Option<String>,
    /// Template of the target's namespace (ignored for cluster-scoped kinds); default the source
    /// object's when patching the source object itself, else the TriggerService's namespace
    #[serde(default)]
    namespace: Option<String>,
    /// `merge` (default, RFC 7386), `json` (RFC 6902 operations), `strategic` (built-in kinds) or
    /// `apply` (server-side apply as field manager ktrigger)
    #[serde(default, rename = "type")]
    patch_type: PatchType,
    /// The patch as YAML (string leaves may be templates; they stay strings), or one template
    /// string that renders to YAML or JSON (for numbers, booleans and computed structure)
    patch: Value,
    /// With type apply: take over fields another manager owns; default false
    #[serde(default)]
    force: bool,
}

/// How the patch is applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum PatchType {
    #[default]
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchType {
    fn content_type(self) -> &'static str {
        match self {
            PatchType::Merge => "application/merge-patch+json",
            PatchType::Json => "application/json-patch+json",
            PatchType::Strategic => "application/strategic-merge-patch+json",
            PatchType::Apply => "application/apply-patch+yaml",
        }
    }

    /// Checks the shape of a rendered or literal patch.
    fn check(self, patch: &Value) -> Result<(), String> {
        match self {
            PatchType::Json => serde_json::from_value::<json_patch::Patch>(patch.clone())
                .map(drop)
                .map_err(|e| format!("a json patch must be a list of RFC 6902 operations: {e}")),
            _ if patch.is_object() => Ok(()),
            _ => Err("the patch must be a mapping (use type: json for a list of operations)".into()),
        }
    }
}

/// The patch: a value with templated leaves, or a template rendering YAML/JSON text.
#[derive(Debug)]
enum PatchBody {
    Value(ValueTemplate),
    Text(Template),
}

/// Builds `patch-resource` destinations.
#[derive(Debug, Clone)]
pub struct PatchResourceFactory {
    cluster: Cluster,
}

impl PatchResourceFactory {
    /// Destinations that act on `cluster`.
    pub fn new(cluster: Cluster) -> Self {
        PatchResourceFactory { cluster }
    }
}

impl DestinationType for PatchResourceFactory {
    type Properties = PatchProperties;
    const NAME: &'static str = "patch-resource";
    const EXAMPLE: &'static str = r#"type: patch-resource
properties:
  apiVersion: v1
  kind: ConfigMap
  name: "{{ object.metadata.name }}-status"
  patch:
    data:
      lastEvent: "{{ event.type }} at {{ event.time }}"
"#;

    fn build(&self, props: PatchProperties, context: &BuildContext) -> Result<Arc<dyn Destination>, PropertyError> {
        let body = match &props.patch {
            Value::String(text) => {
                PatchBody::Text(Template::compile(text).map_err(|e| PropertyError::new("patch", e))?)
            }
            Value::Null => return Err(PropertyError::new("patch", "must not be empty")),
            value => {
                let template = ValueTemplate::compile(value, "patch")?;
                match &template {
                    ValueTemplate::Literal(literal) => props.patch_type.check(literal),
                    ValueTemplate::Array(_) => props.patch_type.check(&Value::Array(vec![])),
                    _ => props.patch_type.check(&json!({})),
                }
                .map_err(|e| PropertyError::new("patch", e))?;
                PatchBody::Value(template)
            }
        };
        if props.force && props.patch_type != PatchType::Apply {
            return Err(PropertyError::new("force", "only applies with type: apply"));
        }
        let own_object = props.api_version.is_none() && props.kind.is_none() && props.name.is_none();
        Ok(Arc::new(PatchResource {
            api_version: compile_optional("apiVersion", props.api_version.as_deref())?,
            kind: compile_optional("kind", props.kind.as_deref())?,
            name: compile_optional("name", props.name.as_deref())?,
            namespace: compile_optional("namespace", props.namespace.as_deref())?,
            own_object,
            patch_type: props.patch_type,
            force: props.force,
            body,
            trigger_namespace: context.trigger.namespace.clone(),
            target: self.cluster.for_trigger(context)?,
        }))
    }
}

/// A built `patch-resource` destination.
struct PatchResource {
    api_version: Option<Template>,
    kind: Option<Template>,
    name: Option<Template>,
    namespace: Option<Template>,
    own_object: bool,
    patch_type: PatchType,
    force: bool,
    body: PatchBody,
    trigger_namespace: String,
    target: ActingCluster,
}

/// What one delivery patches, and with what.
struct Plan {
    api_version: String,
    kind: String,
    name: String,
    namespace: String,
    patch: Value,
}

impl PatchResource {
    fn field(
        &self,
        name: &str,
        template: &Option<Template>,
        scope: &TemplateScope,
        from_object: Option<&str>,
        object_field: &str,
    ) -> Result<String, DeliveryError> {
        let value = match template {
            Some(template) => render_text(name, template, scope)?.trim().to_string(),
            None => from_object.unwrap_or_default().to_string(),
        };
        if value.is_empty() {
            return Err(DeliveryError::permanent(format!(
                "properties.{name}: not given, and the source object has no {object_field}"
            )));
        }
        Ok(value)
    }

    fn plan(&self, request: &DeliveryRequest<'_>) -> Result<Plan, DeliveryError> {
        let scope = request.scope();
        let object = &request.event.object;
        let text = |pointer: &str| object.pointer(pointer).and_then(Value::as_str);
        let api_version = self.field("apiVersion", &self.api_version, &scope, text("/apiVersion"), "apiVersion")?;
        let kind = self.field("kind", &self.kind, &scope, text("/kind"), "kind")?;
        let name = self.field("name", &self.name, &scope, object_name(object), "metadata.name")?;
        let namespace = match &self.namespace {
            Some(template) => render_text("namespace", template, &scope)?.trim().to_string(),
            None if self.own_object => object_namespace(object).unwrap_or_default().to_string(),
            None => default_namespace(&self.trigger_namespace, object),
        };
        let mut patch = match &self.body {
            PatchBody::Value(template) => {
                template.render(&scope).map_err(|e| DeliveryError::permanent(format!("properties.patch: {e}")))?
            }
            PatchBody::Text(template) => {
                let text = render_text("patch", template, &scope)?;
                serde_yaml::from_str::<Value>(&text).map_err(|e| {
                    DeliveryError::permanent(format!("properties.patch: the rendered patch is not YAML or JSON: {e}"))
                })?
            }
        };
        self.patch_type.check(&patch).map_err(|e| DeliveryError::permanent(format!("properties.patch: {e}")))?;
        if self.patch_type == PatchType::Apply {
            // Server-side apply needs the object's identity in the body; fill in what is left out.
            if let Some(fields) = patch.as_object_mut() {
                fields.entry("apiVersion").or_insert_with(|| json!(api_version));
                fields.entry("kind").or_insert_with(|| json!(kind));
                let metadata = fields.entry("metadata").or_insert_with(|| json!({}));
                if let Some(metadata) = metadata.as_object_mut() {
                    metadata.entry("name").or_insert_with(|| json!(name));
                }
            }
        }
        Ok(Plan { api_version, kind, name, namespace, patch })
    }

    fn params(&self) -> PatchParams {
        let params = PatchParams::apply(FIELD_MANAGER);
        if self.force { params.force() } else { params }
    }
}

fn describe(kind: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

#[async_trait]
impl Destination for PatchResource {
    fn render(&self, request: &DeliveryRequest<'_>) -> Result<Value, DeliveryError> {
        let plan = self.plan(request)?;
        let (resource, namespaced) = match self.target.cached(&plan.api_version, &plan.kind) {
            Some(resolved) => (resolved.resource, resolved.namespaced),
            None => {
                let gv: GroupVersion = plan.api_version.parse().map_err(|_| {
                    DeliveryError::permanent(format!("{:?} is not a valid apiVersion", plan.api_version))
                })?;
                let gvk = GroupVersionKind::gvk(&gv.group, &gv.version, &plan.kind);
                (ApiResource::from_gvk(&gvk), !plan.namespace.is_empty())
            }
        };
        let namespace = namespaced.then_some(plan.namespace.as_str());
        let mut query = format!("?fieldManager={FIELD_MANAGER}");
        if self.force {
            query.push_str("&force=true");
        }
        Ok(json!({
            "method": "PATCH",
            "path": format!("{}{query}", resource_path(&resource, namespace, Some(&plan.name))),
            "contentType": self.patch_type.content_type(),
            "body": plan.patch,
        }))
    }

    async fn deliver(&self, request: &DeliveryRequest<'_>) -> Result<Receipt, DeliveryError> {
        self.target.client()?;
        let plan = self.plan(request)?;
        let resolved = self.target.resolve(&plan.api_version, &plan.kind).await?;
        let namespace = if resolved.namespaced {
            Some(if plan.namespace.is_empty() {
                default_namespace(&self.trigger_namespace, &request.event.object)
            } else {
                plan.namespace.clone()
            })
        } else {
            None
        };
        let what = describe(&plan.kind, namespace.as_deref(), &plan.name);
        let api = self.target.api(&resolved, namespace.as_deref().unwrap_or_default())?;
        let result = match self.patch_type {
            PatchType::Merge => api.patch(&plan.name, &self.params(), &Patch::Merge(&plan.patch)).await,
            PatchType::Strategic => api.patch(&plan.name, &self.params(), &Patch::Strategic(&plan.patch)).await,
            PatchType::Apply => api.patch(&plan.name, &self.params(), &Patch::Apply(&plan.patch)).await,
            PatchType::Json => {
                let operations: json_patch::Patch = serde_json::from_value(plan.patch.clone())
                    .map_err(|e| DeliveryError::permanent(format!("properties.patch: {e}")))?;
                api.patch(&plan.name, &self.params(), &Patch::Json::<()>(operations)).await
            }
        };
        let patched = result.map_err(|error| {
            let managers_conflict = self.patch_type == PatchType::Apply
                && matches!(&error, kube::Error::Api(s) if s.code == 409 && s.message.contains("conflict with"));
            if managers_conflict {
                // Another field manager owns the fields: retrying cannot help, forcing can.
                let kube::Error::Api(status) = &error else { unreachable!() };
                DeliveryError::permanent(format!(
                    "apply {what}: {}; set force: true to take the fields over",
                    status.message
                ))
            } else {
                api_error(error, &format!("patch {what}"))
            }
        })?;
        let version = patched.metadata.resource_version.unwrap_or_default();
        Ok(Receipt { detail: Some(format!("patched {what} (resourceVersion {version})")) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktrigger_core::{DestinationFactory, Event, TriggerId, TypedDestination};

    fn build(properties: Value) -> Result<Arc<dyn Destination>, String> {
        let context =
            BuildContext::new(TriggerId { namespace: "apps".into(), service: "s".into(), trigger: "t".into() });
        TypedDestination::new(PatchResourceFactory::new(Cluster::offline()))
            .build(&properties, &context)
            .map_err(|e| e.to_string())
    }

    fn render(destination: &Arc<dyn Destination>, object: Value) -> Result<Value, DeliveryError> {
        let trigger = TriggerId { namespace: "apps".into(), service: "s".into(), trigger: "t".into() };
        let event = Event::new("resource-watcher", "update", object);
        destination.render(&DeliveryRequest { id: "d", trigger: &trigger, event: &event, attempt: 1 })
    }

    #[test]
    fn bad_properties_are_refused_at_load() {
        let err = build(json!({})).err().unwrap();
        assert!(err.contains("missing field `patch`"), "{err}");
        let err = build(json!({"type": "json", "patch": {"a": 1}})).err().unwrap();
        assert!(err.starts_with("properties.patch: a json patch must be a list"), "{err}");
        let err = build(json!({"patch": [{"op": "add"}]})).err().unwrap();
        assert!(err.starts_with("properties.patch: the patch must be a mapping"), "{err}");
        let err = build(json!({"patch": {"data": {"a": "{{ pod.name }}"}}})).err().unwrap();
        assert!(err.starts_with("properties.patch.data.a: unknown variable(s) pod"), "{err}");
        let err = build(json!({"name": "{{ x }}", "patch": {}})).err().unwrap();
        assert!(err.starts_with("properties.name: unknown variable(s) x"), "{err}");
        let err = build(json!({"type": "update", "patch": {}})).err().unwrap();
        assert!(err.starts_with("properties.type: unknown variant `update`"), "{err}");
        let err = build(json!({"force": true, "patch": {}})).err().unwrap();
        assert!(err.starts_with("properties.force:"), "{err}");
    }

    #[test]
    fn dry_run_shows_the_request_of_the_source_object() {
        let destination = build(json!({"patch": {"metadata": {"labels": {"seen": "{{ event.type }}"}}}})).unwrap();
        let object =
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"}});
        let rendered = render(&destination, object).unwrap();
        assert_eq!(
            rendered,
            json!({
                "method": "PATCH",
                "path": "/apis/apps/v1/namespaces/shop/deployments/web?fieldManager=ktrigger",
                "contentType": "application/merge-patch+json",
                "body": {"metadata": {"labels": {"seen": "update"}}},
            })
        );
    }

    #[test]
    fn text_patches_render_to_yaml_and_apply_gets_its_identity() {
        let destination = build(json!({
            "type": "apply", "force": true, "apiVersion": "v1", "kind": "ConfigMap", "name": "copy",
            "patch": "data:\n  replicas: {{ object.spec.replicas }}\n",
        }))
        .unwrap();
        let object = json!({"spec": {"replicas": 3}, "metadata": {"name": "web", "namespace": "shop"}});
        let rendered = render(&destination, object).unwrap();
        assert_eq!(rendered["path"], "/api/v1/namespaces/apps/configmaps/copy?fieldManager=ktrigger&force=true");
        assert_eq!(
            rendered["body"],
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "copy"}, "data": {"replicas": 3}})
        );
    }

    #[test]
    fn a_missing_target_field_is_permanent() {
        let destination = build(json!({"patch": {"a": 1}})).unwrap();
        let err = render(&destination, json!({"metadata": {"name": "x"}})).unwrap_err();
        assert_eq!(
            err,
            DeliveryError::permanent("properties.apiVersion: not given, and the source object has no apiVersion")
        );
    }
}
