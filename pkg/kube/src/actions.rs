//! Destinations that act on the Kubernetes API: `patch-resource`, `bump-application-revision`,
//! `create-event`, `job` (alias `task`), and kube-trigger's `create-event-listener` and
//! `record-event`.
//!
//! All of them act on the [`Cluster`] the sources watch: its client, its identities and its cache
//! of the kinds discovery resolved, seen as one TriggerService through an [`ActingCluster`].
//! Without a client they still load (so `ktrigger validate` checks their properties offline) and
//! every delivery fails permanently with [`NEEDS_CLUSTER`].
//!
//! They act in the TriggerService's namespace unless told otherwise (see [`default_namespace`]),
//! as the TriggerService's identity ([`crate::identity`]), the rule its sources follow.
//! API errors map to delivery outcomes in one place, [`api_error`]: a missing target, a refusal
//! (403, with the API server's message) or an invalid request are permanent; conflicts, throttling,
//! server errors and connection failures are transient.

use ktrigger_core::PropertyError;
use ktrigger_core::{BuildContext, DeliveryError};
use ktrigger_core::{Template, TemplateScope};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use kube::core::gvk::GroupVersion;
use kube::{Client, Error};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::identity::{self, Actor, Identity};
use crate::{Cluster, ResolvedKind};

pub mod bump_app;
pub mod create_event;
pub mod event_listener;
pub mod job;
pub mod patch_resource;

/// Why a delivery fails when ktrigger runs without a cluster.
pub const NEEDS_CLUSTER: &str = "this destination needs a cluster: run with --kubeconfig or in a cluster";

/// The field manager and reporting component ktrigger writes as.
pub const FIELD_MANAGER: &str = "ktrigger";

/// How many times a write that lost a resourceVersion race is read again and retried.
const CONFLICT_RETRIES: usize = 3;

/// The cluster as one TriggerService acts on it: the [`Cluster`]'s client impersonating the
/// TriggerService's identity (none without a cluster), where ktrigger lets it act, and the
/// cluster's discovery cache.
#[derive(Clone)]
pub struct ActingCluster {
    cluster: Cluster,
    /// The cluster's client, acting as `actor`.
    client: Option<Client>,
    actor: Actor,
}

impl std::fmt::Debug for ActingCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActingCluster")
            .field("identity", &self.actor.identity)
            .field("connected", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// What one trigger's destination acts on, by this cluster's [`IdentityPolicy`](crate::IdentityPolicy).
    pub fn for_trigger(&self, context: &BuildContext) -> Result<ActingCluster, PropertyError> {
        self.acting_as(&context.trigger.namespace, context.service_account.as_deref()).map_err(PropertyError::whole)
    }

    /// What a TriggerService in `namespace` that names `service_account` (or none) acts on, by
    /// this cluster's [`IdentityPolicy`](crate::IdentityPolicy).
    pub fn acting_as(&self, namespace: &str, service_account: Option<&str>) -> Result<ActingCluster, String> {
        let actor = self.identities().resolve(namespace, service_account)?;
        let client = self.kube_client().map(|client| identity::client_as(&client, &actor.identity)).transpose()?;
        Ok(ActingCluster { cluster: self.clone(), client, actor })
    }
}

impl ActingCluster {
    /// Who this acts as.
    pub fn identity(&self) -> &Identity {
        &self.actor.identity
    }

    /// Refuses to act outside the TriggerService's namespace when it is confined to it;
    /// `namespace` is `None` for cluster-scoped objects.
    pub fn check_namespace(&self, namespace: Option<&str>, action: &str) -> Result<(), DeliveryError> {
        self.actor.check_namespace(namespace).map_err(|e| DeliveryError::permanent(format!("{action}: {e}")))
    }

    /// The client, or the permanent "needs a cluster" error.
    pub fn client(&self) -> Result<&Client, DeliveryError> {
        self.client.as_ref().ok_or_else(|| DeliveryError::permanent(NEEDS_CLUSTER))
    }

    /// The kind `kind` of `api_version` as discovery last resolved it, without asking the cluster.
    pub fn cached(&self, api_version: &str, kind: &str) -> Option<ResolvedKind> {
        let gv: GroupVersion = api_version.parse().ok()?;
        self.cluster.cached_kind(&GroupVersionKind::gvk(&gv.group, &gv.version, kind))
    }

    /// Resolves `kind` of `api_version` through discovery, once per kind for the whole cluster; a
    /// kind the cluster does not serve is a permanent error.
    pub async fn resolve(&self, api_version: &str, kind: &str) -> Result<ResolvedKind, DeliveryError> {
        let client = self.client()?;
        let gv: GroupVersion = api_version
            .parse()
            .map_err(|_| DeliveryError::permanent(format!("{api_version:?} is not a valid apiVersion")))?;
        let gvk = GroupVersionKind::gvk(&gv.group, &gv.version, kind);
        match self.cluster.discover(client, &gvk).await {
            Ok(resolved) => Ok(resolved),
            Err(Error::Discovery(_)) => {
                Err(DeliveryError::permanent(format!("the cluster serves no kind {kind} in {api_version}")))
            }
            Err(Error::Api(status)) if status.code == 404 => {
                Err(DeliveryError::permanent(format!("the cluster does not serve apiVersion {api_version}")))
            }
            Err(error) => Err(api_error(error, &format!("discover {kind} in {api_version}"))),
        }
    }

    /// A dynamic API for `kind`, in `namespace` when the kind is namespaced.
    pub fn api(&self, kind: &ResolvedKind, namespace: &str) -> Result<Api<DynamicObject>, DeliveryError> {
        let client = self.client()?.clone();
        let scope = kind.namespaced.then_some(namespace);
        self.check_namespace(scope, &format!("act on {}", kind.resource.kind))?;
        Ok(if kind.namespaced {
            Api::namespaced_with(client, namespace, &kind.resource)
        } else {
            Api::all_with(client, &kind.resource)
        })
    }
}

/// Maps an API error of `action` (e.g. `patch ConfigMap apps/web`) to a delivery outcome.
/// 403 keeps the API server's message so RBAC problems are never hidden.
pub fn api_error(error: Error, action: &str) -> DeliveryError {
    match error {
        Error::Api(status) => {
            let message = if status.message.is_empty() { status.reason.clone() } else { status.message.clone() };
            match status.code {
                404 => DeliveryError::permanent(format!("{action}: target not found: {message}")),
                403 => DeliveryError::permanent(format!("{action}: forbidden: {message}")),
                409 => DeliveryError::transient(format!("{action}: conflict: {message}")),
                401 => DeliveryError::transient(format!("{action}: unauthorized: {message}")),
                408 | 429 => DeliveryError::transient(format!("{action}: {message} ({})", status.code)),
                500..=599 => DeliveryError::transient(format!("{action}: server error {}: {message}", status.code)),
                code => DeliveryError::permanent(format!("{action}: rejected ({code} {}): {message}", status.reason)),
            }
        }
        other => DeliveryError::transient(format!("{action}: {other}")),
    }
}

/// Whether `error` is a 409 answer (a conflict, or an object that already exists).
pub fn is_conflict(error: &Error) -> bool {
    matches!(error, Error::Api(status) if status.code == 409)
}

/// The namespace a destination acts in when not told: the TriggerService's, else the source
/// object's, else `default`.
pub fn default_namespace(trigger_namespace: &str, object: &Value) -> String {
    if !trigger_namespace.is_empty() {
        return trigger_namespace.to_string();
    }
    object_namespace(object).unwrap_or("default").to_string()
}

/// `metadata.namespace` of `object`, when set.
pub fn object_namespace(object: &Value) -> Option<&str> {
    object.pointer("/metadata/namespace").and_then(Value::as_str).filter(|ns| !ns.is_empty())
}

/// `metadata.name` of `object`, when set.
pub fn object_name(object: &Value) -> Option<&str> {
    object.pointer("/metadata/name").and_then(Value::as_str).filter(|name| !name.is_empty())
}

/// The REST path of `resource` (a collection without `name`), as `render()` shows it.
pub fn resource_path(resource: &ApiResource, namespace: Option<&str>, name: Option<&str>) -> String {
    let mut path = if resource.group.is_empty() {
        format!("/api/{}", resource.version)
    } else {
        format!("/apis/{}", resource.api_version)
    };
    if let Some(ns) = namespace {
        path.push_str("/namespaces/");
        path.push_str(ns);
    }
    path.push('/');
    path.push_str(&resource.plural);
    if let Some(name) = name {
        path.push('/');
        path.push_str(name);
    }
    path
}

/// A short lowercase hex digest of a delivery id: the same for every retry of that delivery.
pub fn delivery_suffix(delivery_id: &str, len: usize) -> String {
    let digest = hex::encode(Sha256::digest(delivery_id.as_bytes()));
    digest[..len.min(digest.len())].to_string()
}

/// Compiles an optional template property, naming it in the error.
pub fn compile_optional(name: &str, source: Option<&str>) -> Result<Option<Template>, PropertyError> {
    source.map(Template::compile).transpose().map_err(|e| PropertyError::new(name, e))
}

/// Renders a template property; a failure is permanent and names the property.
pub fn render_text(name: &str, template: &Template, scope: &TemplateScope) -> Result<String, DeliveryError> {
    template.render(scope).map_err(|e| DeliveryError::permanent(format!("properties.{name}: {e}")))
}

/// A JSON or YAML value whose string leaves may be templates, checked at load.
#[derive(Debug, Clone)]
pub enum ValueTemplate {
    /// A value used as it is.
    Literal(Value),
    /// A string rendered per delivery.
    Text(Template),
    /// An array with some templated items.
    Array(Vec<ValueTemplate>),
    /// An object with some templated values (keys are literal).
    Object(Vec<(String, ValueTemplate)>),
}

impl ValueTemplate {
    /// Compiles every string leaf of `value` that contains `{{` or `{%`; errors name the leaf.
    pub fn compile(value: &Value, at: &str) -> Result<ValueTemplate, PropertyError> {
        if !has_template(value) {
            return Ok(ValueTemplate::Literal(value.clone()));
        }
        Ok(match value {
            Value::String(text) => ValueTemplate::Text(Template::compile(text).map_err(|e| PropertyError::new(at, e))?),
            Value::Array(items) => ValueTemplate::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| ValueTemplate::compile(item, &format!("{at}[{i}]")))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(fields) => ValueTemplate::Object(
                fields
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), ValueTemplate::compile(v, &format!("{at}.{k}"))?)))
                    .collect::<Result<_, PropertyError>>()?,
            ),
            other => ValueTemplate::Literal(other.clone()),
        })
    }

    /// The literal value, when nothing in it is a template.
    pub fn literal(&self) -> Option<&Value> {
        match self {
            ValueTemplate::Literal(value) => Some(value),
            _ => None,
        }
    }

    /// The value with every template rendered (templated leaves stay strings).
    pub fn render(&self, scope: &TemplateScope) -> Result<Value, String> {
        Ok(match self {
            ValueTemplate::Literal(value) => value.clone(),
            ValueTemplate::Text(template) => Value::String(template.render(scope)?),
            ValueTemplate::Array(items) => {
                Value::Array(items.iter().map(|item| item.render(scope)).collect::<Result<_, _>>()?)
            }
            ValueTemplate::Object(fields) => Value::Object(
                fields.iter().map(|(k, v)| Ok((k.clone(), v.render(scope)?))).collect::<Result<_, String>>()?,
            ),
        })
    }
}

fn has_template(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains("{{") || text.contains("{%"),
        Value::Array(items) => items.iter().any(has_template),
        Value::Object(fields) => fields.values().any(has_template),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClusterOptions, IdentityPolicy};
    use ktrigger_core::{DeliveryRequest, Registry};
    use ktrigger_core::{Event, TriggerId};
    use serde_json::json;

    fn context(namespace: &str, service_account: Option<&str>) -> BuildContext {
        BuildContext {
            service_account: service_account.map(String::from),
            ..BuildContext::new(TriggerId { namespace: namespace.into(), service: "s".into(), trigger: "t".into() })
        }
    }

    /// A controller's cluster that could not be reached: identities apply, deliveries fail.
    async fn controller(default_service_account: Option<&str>, cluster_wide: bool) -> Cluster {
        let identities = IdentityPolicy::controller(default_service_account.map(String::from), cluster_wide).unwrap();
        let kubeconfig = Some("/nonexistent/kubeconfig".into());
        let cluster = Cluster::connect(&ClusterOptions { kubeconfig, identities, ..Default::default() }).await.unwrap();
        assert!(cluster.kube_client().is_none());
        cluster
    }

    #[tokio::test]
    async fn without_an_identity_actions_stay_in_the_trigger_service_namespace() {
        let target = controller(None, false).await.for_trigger(&context("apps", None)).unwrap();
        assert_eq!(target.identity(), &Identity::Own);
        assert!(target.check_namespace(Some("apps"), "patch").is_ok());
        let refused = target.check_namespace(Some("kube-system"), "patch ConfigMap kube-system/x").unwrap_err();
        assert!(
            matches!(&refused, DeliveryError::Permanent { reason } if reason.starts_with("patch ConfigMap kube-system/x: namespace \"kube-system\" is outside the TriggerService's namespace \"apps\"")),
            "{refused:?}"
        );
        assert!(target.check_namespace(None, "patch Node n1").is_err(), "cluster-scoped objects are outside too");
    }

    #[tokio::test]
    async fn the_default_service_account_acts_for_trigger_services_without_one() {
        let target = controller(Some("ktrigger"), false).await;
        let default = target.for_trigger(&context("apps", None)).unwrap();
        let expected = Identity::ServiceAccount { namespace: "apps".into(), name: "ktrigger".into() };
        assert_eq!(default.identity(), &expected);
        assert!(default.check_namespace(Some("other"), "patch").is_ok(), "its RBAC decides, not ktrigger");
        let named = target.for_trigger(&context("apps", Some("robot"))).unwrap();
        assert_eq!(named.identity(), &Identity::ServiceAccount { namespace: "apps".into(), name: "robot".into() });
    }

    #[tokio::test]
    async fn the_cluster_wide_flag_and_local_files_are_not_restricted() {
        let wide = controller(None, true).await.for_trigger(&context("apps", None));
        assert!(wide.unwrap().check_namespace(Some("other"), "patch").is_ok());
        let local = Cluster::offline().for_trigger(&context("apps", None));
        assert!(local.unwrap().check_namespace(Some("other"), "patch").is_ok());
    }

    #[test]
    fn a_service_account_needs_a_namespaced_trigger_service() {
        let err = Cluster::offline().for_trigger(&context("", Some("robot"))).err().unwrap().to_string();
        assert!(err.contains("serviceAccountName \"robot\" needs a namespaced TriggerService"), "{err}");
    }

    #[test]
    fn docs_are_complete_and_their_examples_load() {
        let mut registry = Registry::default();
        crate::register(&mut registry, Cluster::offline());
        let context =
            BuildContext::new(TriggerId { namespace: "apps".into(), service: "s".into(), trigger: "t".into() });
        let docs = registry.destination_docs();
        assert_eq!(docs.len(), 6);
        for doc in docs {
            // create-event-listener takes nothing but the source object.
            let takes_properties = doc.name != "create-event-listener";
            assert!(!doc.summary.is_empty() && doc.properties.is_empty() != takes_properties, "{}", doc.name);
            let entry: Value = serde_yaml::from_str(&doc.example).unwrap();
            assert_eq!(entry["type"], doc.name);
            registry.destination(&doc.name).unwrap().build(&entry["properties"], &context).unwrap();
        }
        assert_eq!(registry.destination("task").unwrap().doc().name, "job");
    }

    #[tokio::test]
    async fn without_a_cluster_every_delivery_fails_permanently() {
        let mut registry = Registry::default();
        crate::register(&mut registry, Cluster::offline());
        let trigger = TriggerId { namespace: "apps".into(), service: "s".into(), trigger: "t".into() };
        let context = BuildContext::new(trigger.clone());
        let event = Event::new(
            "resource-watcher",
            "update",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web", "namespace": "apps", "uid": "u"}}),
        );
        let request = DeliveryRequest { id: "d-1", trigger: &trigger, event: &event, attempt: 1 };
        for doc in registry.destination_docs() {
            let entry: Value = serde_yaml::from_str(&doc.example).unwrap();
            let destination = registry.destination(&doc.name).unwrap().build(&entry["properties"], &context).unwrap();
            let error = destination.deliver(&request).await.unwrap_err();
            assert_eq!(error, DeliveryError::permanent(NEEDS_CLUSTER), "{}", doc.name);
        }
    }

    #[test]
    fn api_errors_map_to_outcomes() {
        let status = |code: u16, reason: &str| {
            Error::Api(kube::core::Status::failure(&format!("{reason} message"), reason).with_code(code).boxed())
        };
        let forbidden = api_error(status(403, "Forbidden"), "patch ConfigMap a/b");
        assert_eq!(forbidden, DeliveryError::permanent("patch ConfigMap a/b: forbidden: Forbidden message"));
        assert!(
            matches!(api_error(status(404, "NotFound"), "x"), DeliveryError::Permanent { reason } if reason.contains("target not found"))
        );
        assert!(matches!(api_error(status(409, "Conflict"), "x"), DeliveryError::Transient { .. }));
        assert!(matches!(api_error(status(503, "ServiceUnavailable"), "x"), DeliveryError::Transient { .. }));
        assert!(matches!(api_error(status(429, "TooManyRequests"), "x"), DeliveryError::Transient { .. }));
        assert!(matches!(api_error(status(422, "Invalid"), "x"), DeliveryError::Permanent { .. }));
    }

    #[test]
    fn paths_follow_the_api_layout() {
        let cm = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "ConfigMap"), "configmaps");
        assert_eq!(resource_path(&cm, Some("a"), Some("b")), "/api/v1/namespaces/a/configmaps/b");
        let node = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "Node"), "nodes");
        assert_eq!(resource_path(&node, None, Some("n1")), "/api/v1/nodes/n1");
        let job = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("batch", "v1", "Job"), "jobs");
        assert_eq!(resource_path(&job, Some("a"), None), "/apis/batch/v1/namespaces/a/jobs");
    }

    #[test]
    fn namespaces_default_to_the_trigger_then_the_object() {
        let object = json!({"metadata": {"namespace": "src"}});
        assert_eq!(default_namespace("apps", &object), "apps");
        assert_eq!(default_namespace("", &object), "src");
        assert_eq!(default_namespace("", &json!({})), "default");
    }

    #[test]
    fn value_templates_render_string_leaves_only() {
        let template = ValueTemplate::compile(
            &json!({"data": {"who": "{{ object.name }}", "n": 3, "list": ["a", "{{ event.type }}"]}}),
            "properties.patch",
        )
        .unwrap();
        assert!(template.literal().is_none());
        let event = Event::new("cron", "fire", json!({"name": "web"}));
        let rendered = template.render(&TemplateScope::new(&event, "t")).unwrap();
        assert_eq!(rendered, json!({"data": {"who": "web", "n": 3, "list": ["a", "fire"]}}));
        let err = ValueTemplate::compile(&json!({"a": ["{{ pod.x }}"]}), "patch").unwrap_err().to_string();
        assert!(err.starts_with("properties.patch.a[0]: unknown variable(s) pod"), "{err}");
        assert!(ValueTemplate::compile(&json!({"a": 1}), "p").unwrap().literal().is_some());
    }
}
