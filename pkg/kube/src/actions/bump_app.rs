//! The `bump-application-revision` destination: increments the `app.oam.dev/publishVersion`
//! annotation of KubeVela Applications so that KubeVela rolls out a new revision.
//!
//! Applications are selected as kube-trigger selects them: by the value of a label of the source
//! object (`nameSelector.fromLabel`), by a label selector (`matchingLabels`), by `name`, or by
//! default the Application named like the source object. Each bump is a merge patch guarded by the
//! resourceVersion that was read, retried after a re-read on conflict. The delivery id is kept in
//! an annotation so a retried delivery does not bump an Application twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use ktrigger_core::DestinationType;
use ktrigger_core::PropertyError;
use ktrigger_core::{BuildContext, DeliveryError, DeliveryRequest, Destination, Receipt};
use ktrigger_core::{Template, TemplateScope};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    ActingCluster, CONFLICT_RETRIES, FIELD_MANAGER, api_error, compile_optional, default_namespace, is_conflict,
    object_name, render_text, resource_path,
};
use crate::Cluster;

/// The annotation KubeVela reads to publish a new Application revision.
pub const PUBLISH_VERSION: &str = "app.oam.dev/publishVersion";

/// The annotation holding the id of the delivery that last bumped the Application.
pub const BUMPED_BY: &str = "ktrigger.dev/bumped-by-delivery";

/// Increments app.oam.dev/publishVersion of KubeVela Applications so they publish a new revision
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BumpProperties {
    /// Template of the Applications' namespace; default the TriggerService's namespace, else the
    /// source object's
    #[serde(default)]
    namespace: Option<String>,
    /// Template of one Application's name. With no selector at all, the Application named like the
    /// source object is bumped
    #[serde(default)]
    name: Option<String>,
    /// {fromLabel: KEY}: bump the Application named by the value of label KEY of the source object
    #[serde(default)]
    name_selector: Option<NameSelector>,
    /// Map of label to value (values may be templates): bump every Application with these labels
    /// (kube-trigger's labelSelectors is accepted too)
    #[serde(default, alias = "labelSelectors")]
    matching_labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NameSelector {
    from_label: String,
}

/// How the Applications are chosen.
#[derive(Debug)]
enum Selection {
    /// The Application named like the source object.
    SourceName,
    /// The Application named by a template.
    Name(Template),
    /// The Application named by a label of the source object.
    FromLabel(String),
    /// Every Application with these labels.
    Labels(Vec<(String, Template)>),
}

/// Builds `bump-application-revision` destinations.
#[derive(Debug, Clone)]
pub struct BumpAppFactory {
    cluster: Cluster,
}

impl BumpAppFactory {
    /// Destinations that act on `cluster`.
    pub fn new(cluster: Cluster) -> Self {
        BumpAppFactory { cluster }
    }
}

impl DestinationType for BumpAppFactory {
    type Properties = BumpProperties;
    const NAME: &'static str = "bump-application-revision";
    const EXAMPLE: &'static str = r#"type: bump-application-revision
properties:
  namespace: default
  nameSelector:
    fromLabel: watch-this
"#;

    fn build(&self, props: BumpProperties, context: &BuildContext) -> Result<Arc<dyn Destination>, PropertyError> {
        let given = [props.name.is_some(), props.name_selector.is_some(), props.matching_labels.is_some()];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(PropertyError::whole("give at most one of name, nameSelector and matchingLabels"));
        }
        let selection = if let Some(selector) = props.name_selector {
            if selector.from_label.trim().is_empty() {
                return Err(PropertyError::new("nameSelector.fromLabel", "must name a label"));
            }
            Selection::FromLabel(selector.from_label)
        } else if let Some(labels) = props.matching_labels {
            if labels.is_empty() {
                return Err(PropertyError::new("matchingLabels", "must hold at least one label"));
            }
            let labels = labels
                .into_iter()
                .map(|(key, value)| {
                    let template = Template::compile(&value)
                        .map_err(|e| PropertyError::new(format!("matchingLabels.{key}"), e))?;
                    Ok((key, template))
                })
                .collect::<Result<_, PropertyError>>()?;
            Selection::Labels(labels)
        } else if let Some(name) = compile_optional("name", props.name.as_deref())? {
            Selection::Name(name)
        } else {
            Selection::SourceName
        };
        Ok(Arc::new(BumpApp {
            namespace: compile_optional("namespace", props.namespace.as_deref())?,
            selection,
            trigger_namespace: context.trigger.namespace.clone(),
            target: self.cluster.for_trigger(context)?,
        }))
    }
}

/// A built `bump-application-revision` destination.
struct BumpApp {
    namespace: Option<Template>,
    selection: Selection,
    trigger_namespace: String,
    target: ActingCluster,
}

/// The Applications one delivery bumps: by name, or every one matching a label selector.
enum Chosen {
    Name(String),
    Selector(String),
}

fn application_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("core.oam.dev", "v1beta1", "Application"), "applications")
}

impl BumpApp {
    fn namespace(&self, request: &DeliveryRequest<'_>, scope: &TemplateScope) -> Result<String, DeliveryError> {
        let namespace = match &self.namespace {
            Some(template) => render_text("namespace", template, scope)?.trim().to_string(),
            None => String::new(),
        };
        Ok(if namespace.is_empty() {
            default_namespace(&self.trigger_namespace, &request.event.object)
        } else {
            namespace
        })
    }

    fn choose(&self, request: &DeliveryRequest<'_>, scope: &TemplateScope) -> Result<Chosen, DeliveryError> {
        let object = &request.event.object;
        let named = |name: &str, why: &str| {
            if name.trim().is_empty() {
                Err(DeliveryError::permanent(why.to_string()))
            } else {
                Ok(Chosen::Name(name.trim().to_string()))
            }
        };
        match &self.selection {
            Selection::SourceName => {
                named(object_name(object).unwrap_or_default(), "the source object has no metadata.name")
            }
            Selection::Name(template) => {
                named(&render_text("name", template, scope)?, "properties.name: rendered an empty name")
            }
            Selection::FromLabel(key) => {
                let value =
                    object.pointer("/metadata/labels").and_then(|labels| labels.get(key)).and_then(Value::as_str);
                named(
                    value.unwrap_or_default(),
                    &format!("the source object has no label {key} naming the Application to bump"),
                )
            }
            Selection::Labels(labels) => {
                let mut selector = Vec::with_capacity(labels.len());
                for (key, template) in labels {
                    let value = render_text(&format!("matchingLabels.{key}"), template, scope)?;
                    selector.push(format!("{key}={}", value.trim()));
                }
                Ok(Chosen::Selector(selector.join(",")))
            }
        }
    }

    /// Bumps one Application, starting from `current` when it was just listed.
    async fn bump(
        &self,
        api: &Api<DynamicObject>,
        namespace: &str,
        name: &str,
        mut current: Option<DynamicObject>,
        delivery_id: &str,
    ) -> Result<String, DeliveryError> {
        let what = format!("Application {namespace}/{name}");
        let mut attempt = 0;
        loop {
            let application = match current.take() {
                Some(application) => application,
                None => api.get(name).await.map_err(|e| api_error(e, &format!("get {what}")))?,
            };
            let annotations = application.metadata.annotations.unwrap_or_default();
            let published = annotations.get(PUBLISH_VERSION).map(String::as_str);
            if annotations.get(BUMPED_BY).map(String::as_str) == Some(delivery_id) {
                // An earlier attempt of this delivery bumped it already.
                return Ok(published.unwrap_or_default().to_string());
            }
            let next = match published {
                None => 1,
                Some(text) => text.trim().parse::<u64>().map(|n| n + 1).map_err(|_| {
                    DeliveryError::permanent(format!(
                        "{what}: annotation {PUBLISH_VERSION} is {text:?}, not an integer, so it cannot be bumped"
                    ))
                })?,
            }
            .to_string();
            let patch = json!({"metadata": {
                "resourceVersion": application.metadata.resource_version,
                "annotations": {PUBLISH_VERSION: next, BUMPED_BY: delivery_id},
            }});
            let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
            match api.patch(name, &params, &Patch::Merge(&patch)).await {
                Ok(_) => return Ok(next),
                Err(error) if is_conflict(&error) && attempt < CONFLICT_RETRIES => attempt += 1,
                Err(error) => return Err(api_error(error, &format!("bump {what}"))),
            }
        }
    }
}

#[async_trait]
impl Destination for BumpApp {
    fn render(&self, request: &DeliveryRequest<'_>) -> Result<Value, DeliveryError> {
        let scope = request.scope();
        let namespace = self.namespace(request, &scope)?;
        let resource = application_resource();
        let patch = json!({"metadata": {
            "resourceVersion": "<as read>",
            "annotations": {PUBLISH_VERSION: "<publishVersion + 1>", BUMPED_BY: request.id},
        }});
        let mut rendered = json!({
            "method": "PATCH",
            "contentType": "application/merge-patch+json",
            "body": patch,
        });
        match self.choose(request, &scope)? {
            Chosen::Name(name) => {
                rendered["path"] = json!(resource_path(&resource, Some(&namespace), Some(&name)));
            }
            Chosen::Selector(selector) => {
                rendered["list"] =
                    json!(format!("{}?labelSelector={selector}", resource_path(&resource, Some(&namespace), None)));
                rendered["path"] = json!(resource_path(&resource, Some(&namespace), Some("<each listed Application>")));
            }
        }
        Ok(rendered)
    }

    async fn deliver(&self, request: &DeliveryRequest<'_>) -> Result<Receipt, DeliveryError> {
        let client = self.target.client()?;
        let scope = request.scope();
        let namespace = self.namespace(request, &scope)?;
        self.target.check_namespace(Some(&namespace), "bump Applications")?;
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &application_resource());
        let mut bumped = Vec::new();
        match self.choose(request, &scope)? {
            Chosen::Name(name) => {
                let version = self.bump(&api, &namespace, &name, None, request.id).await?;
                bumped.push(format!("{namespace}/{name} (publishVersion {version})"));
            }
            Chosen::Selector(selector) => {
                let list = api
                    .list(&ListParams::default().labels(&selector))
                    .await
                    .map_err(|e| api_error(e, &format!("list Applications in {namespace} with {selector}")))?;
                if list.items.is_empty() {
                    return Ok(Receipt {
                        detail: Some(format!("no Application in {namespace} has the labels {selector}: none bumped")),
                    });
                }
                for application in list.items {
                    let name = application.metadata.name.clone().unwrap_or_default();
                    let version = self.bump(&api, &namespace, &name, Some(application), request.id).await?;
                    bumped.push(format!("{namespace}/{name} (publishVersion {version})"));
                }
            }
        }
        let noun = if bumped.len() == 1 { "Application" } else { "Applications" };
        Ok(Receipt { detail: Some(format!("bumped {noun} {}", bumped.join(", "))) })
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
        TypedDestination::new(BumpAppFactory::new(Cluster::offline()))
            .build(&properties, &BuildContext::new(trigger()))
            .map_err(|e| e.to_string())
    }

    fn render(destination: &Arc<dyn Destination>, object: Value) -> Result<Value, DeliveryError> {
        let trigger = trigger();
        let event = Event::new("resource-watcher", "update", object);
        destination.render(&DeliveryRequest { id: "d-1", trigger: &trigger, event: &event, attempt: 1 })
    }

    #[test]
    fn selectors_are_checked_at_load() {
        let err = build(json!({"name": "a", "nameSelector": {"fromLabel": "x"}})).err().unwrap();
        assert_eq!(err, "properties: give at most one of name, nameSelector and matchingLabels");
        let err = build(json!({"nameSelector": {"label": "x"}})).err().unwrap();
        assert!(err.contains("unknown field `label`, expected `fromLabel`"), "{err}");
        let err = build(json!({"matchingLabels": {"app": "{{ nope }}"}})).err().unwrap();
        assert!(err.starts_with("properties.matchingLabels.app: unknown variable(s) nope"), "{err}");
        build(json!({"labelSelectors": {"app": "web"}})).unwrap();
    }

    #[test]
    fn dry_run_names_the_application_from_the_label() {
        let destination = build(json!({"namespace": "default", "nameSelector": {"fromLabel": "watch-this"}})).unwrap();
        let object = json!({"metadata": {"name": "cm", "labels": {"watch-this": "app-1"}}});
        let rendered = render(&destination, object).unwrap();
        assert_eq!(rendered["path"], "/apis/core.oam.dev/v1beta1/namespaces/default/applications/app-1");
        assert_eq!(rendered["body"]["metadata"]["annotations"][BUMPED_BY], "d-1");
        let err = render(&destination, json!({"metadata": {"name": "cm"}})).unwrap_err();
        assert_eq!(
            err,
            DeliveryError::permanent("the source object has no label watch-this naming the Application to bump")
        );
    }

    #[test]
    fn dry_run_lists_by_labels_in_the_trigger_namespace() {
        let destination = build(json!({"matchingLabels": {"team": "{{ object.metadata.labels.team }}"}})).unwrap();
        let rendered = render(&destination, json!({"metadata": {"name": "cm", "labels": {"team": "a"}}})).unwrap();
        assert_eq!(rendered["list"], "/apis/core.oam.dev/v1beta1/namespaces/apps/applications?labelSelector=team=a");
    }
}
