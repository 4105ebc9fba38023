//! The `resource-watcher` source (kube-trigger's): create, update and delete events of any kind
//! of object, found by discovery, through the shared [`WatchHub`](crate::WatchHub).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use ktrigger_core::{BuildContext, EventSink, PropertyError, Source, SourceError, SourceState, SourceType, TriggerId};
use kube::core::GroupVersionKind;
use schemars::JsonSchema;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::hub::{Change, ChangeKind, EventShape, Interest, Subscriber, WatchKey};
use crate::position::Position;
use crate::selector::{ObjectSelector, canonical_fields, merge_labels};
use crate::{Actor, Cluster, Slot, run_subscribed};

/// The source type name.
pub const NAME: &str = "resource-watcher";

/// kube-trigger's name of the cluster it runs in.
const LOCAL_CLUSTER: &str = "local";

/// Create, update and delete events of any kind of Kubernetes object (CRDs included).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceWatcherProperties {
    /// apiVersion of the kind, e.g. v1, apps/v1, example.com/v1alpha1. The kind is looked up by
    /// discovery when the source runs, not when it loads (so `validate` needs no cluster); a
    /// kind the cluster does not serve is reported on the trigger and looked up again with
    /// backoff.
    api_version: String,
    /// Kind, e.g. ConfigMap, Deployment.
    kind: String,
    /// Namespace to watch; empty or absent for all namespaces (in the controller, the
    /// TriggerService's own namespace when it has no identity). Ignored for cluster-scoped kinds.
    #[serde(default)]
    namespace: Option<String>,
    /// Which of create, update, delete this trigger receives; default all three. Each trigger
    /// gets exactly the types it lists, also when other triggers watch the same kind.
    #[serde(default)]
    events: Vec<EventType>,
    /// Labels the object must have (a map); combined with labelSelector.
    #[serde(default)]
    matching_labels: BTreeMap<String, String>,
    /// Label selector, e.g. `app=web,tier in (api,db),!legacy`; checked at load.
    #[serde(default)]
    label_selector: Option<String>,
    /// Field selector, e.g. `status.phase!=Running`; which fields work is up to the API server.
    #[serde(default)]
    field_selector: Option<String>,
    /// Only the object with this name.
    #[serde(default)]
    name: Option<String>,
    /// Report objects that exist when the trigger starts as create events; default false (only
    /// changes after the start are reported). With a state store, only on the trigger's first
    /// start: later starts report what changed while it was not running.
    #[serde(default)]
    replay_existing: bool,
    /// kube-trigger's list of clusters to watch: only `local` (the cluster ktrigger runs in) is
    /// supported; other clusters are refused until multi-cluster sources exist.
    #[serde(default)]
    clusters: Vec<String>,
}

/// A change type a trigger receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum EventType {
    Create,
    Update,
    Delete,
}

/// Parses `group/version` (or `version` for the core group) and a kind.
pub(crate) fn parse_gvk(api_version: &str, kind: &str) -> Result<GroupVersionKind, PropertyError> {
    let (group, version) = match api_version.trim().split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", api_version.trim()),
    };
    let word = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    if !word(version) || (!group.is_empty() && !word(group)) || version.contains('.') {
        return Err(PropertyError::new("apiVersion", format!("{api_version:?} is not `version` or `group/version`")));
    }
    if kind.is_empty() || !kind.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(PropertyError::new("kind", format!("{kind:?} is not a kind name such as ConfigMap")));
    }
    Ok(GroupVersionKind::gvk(group, version, kind))
}

/// Builds `resource-watcher` sources on one cluster.
#[derive(Debug, Clone)]
pub struct ResourceWatcherFactory {
    cluster: Cluster,
}

impl ResourceWatcherFactory {
    /// Sources that watch `cluster`.
    pub fn new(cluster: Cluster) -> Self {
        ResourceWatcherFactory { cluster }
    }
}

impl SourceType for ResourceWatcherFactory {
    type Properties = ResourceWatcherProperties;
    const NAME: &'static str = NAME;
    const EXAMPLE: &'static str = "source:
  type: resource-watcher
  properties:
    apiVersion: v1
    kind: ConfigMap
    namespace: apps
    events: [create, update]
    matchingLabels: {app: shop}
";

    fn build(
        &self,
        props: ResourceWatcherProperties,
        context: &BuildContext,
    ) -> Result<Arc<dyn Source>, PropertyError> {
        if let Some(other) = props.clusters.iter().find(|cluster| cluster.as_str() != LOCAL_CLUSTER) {
            return Err(PropertyError::new(
                "clusters",
                format!(
                    "cluster {other:?} cannot be watched: only {LOCAL_CLUSTER:?}, the cluster \
                 ktrigger runs in, is supported; run a ktrigger in that cluster instead"
                ),
            ));
        }
        let gvk = parse_gvk(&props.api_version, &props.kind)?;
        let labels = merge_labels(&props.matching_labels, props.label_selector.as_deref())
            .map_err(|e| PropertyError::new("labelSelector", e))?;
        let mut fields = props.field_selector.clone().unwrap_or_default();
        if let Some(name) = props.name.as_deref().filter(|n| !n.is_empty()) {
            if name.contains([',', '=', ' ']) {
                return Err(PropertyError::new("name", format!("{name:?} is not an object name")));
            }
            fields = if fields.trim().is_empty() {
                format!("metadata.name={name}")
            } else {
                format!("{fields},metadata.name={name}")
            };
        }
        let fields = canonical_fields(&fields).map_err(|e| PropertyError::new("fieldSelector", e))?;
        let (selector, server_fields) =
            ObjectSelector::new(&labels, &fields).map_err(|e| PropertyError::new("labelSelector", e))?;
        // Written as watch scopes were when selectors were part of the watch, so that stored
        // positions stay valid.
        let mut selecting = String::new();
        if !labels.is_empty() {
            selecting.push_str(&format!(" with labels {labels:?}"));
        }
        if !fields.is_empty() {
            selecting.push_str(&format!(" with fields {fields:?}"));
        }
        let events = if props.events.is_empty() {
            vec![EventType::Create, EventType::Update, EventType::Delete]
        } else {
            props.events.clone()
        };
        let (actor, namespace) = self.cluster.scope(context, props.namespace)?;
        self.cluster.check_available()?;
        Ok(Arc::new(ResourceWatcher {
            cluster: self.cluster.clone(),
            trigger: context.trigger.clone(),
            gvk,
            actor,
            namespace,
            selector,
            selecting,
            fields: server_fields,
            interest: ResourceInterest {
                create: events.contains(&EventType::Create),
                update: events.contains(&EventType::Update),
                delete: events.contains(&EventType::Delete),
            },
            needs_old: context.needs.old_object,
            replay_existing: props.replay_existing,
            state: context.state.clone(),
            slot: Slot::default(),
        }))
    }
}

/// Which change types a trigger asked for.
#[derive(Debug, Clone, Copy)]
struct ResourceInterest {
    create: bool,
    update: bool,
    delete: bool,
}

impl Interest for ResourceInterest {
    fn shape(&self, change: &Change) -> Option<EventShape> {
        let wanted = match change.kind {
            ChangeKind::Create => self.create,
            ChangeKind::Update => self.update,
            ChangeKind::Delete => self.delete,
        };
        wanted.then(|| EventShape::of_change(NAME, change))
    }
}

struct ResourceWatcher {
    cluster: Cluster,
    trigger: TriggerId,
    gvk: GroupVersionKind,
    actor: Actor,
    namespace: Option<String>,
    /// Label selector and the field selectors the engine evaluates.
    selector: ObjectSelector,
    /// The selectors, as the scope of the stored position names them.
    selecting: String,
    /// Field selectors left to the API server.
    fields: String,
    interest: ResourceInterest,
    needs_old: bool,
    replay_existing: bool,
    state: SourceState,
    slot: Slot,
}

#[async_trait]
impl Source for ResourceWatcher {
    async fn run(&self, sink: EventSink, cancel: CancellationToken) -> Result<(), SourceError> {
        let client = self.cluster.client()?;
        let subscribe = async {
            let (resource, namespaced) = self.cluster.resolve(&client, &self.gvk).await?;
            let namespace = match (&self.namespace, namespaced) {
                (_, false) => {
                    self.actor
                        .check_namespace(None)
                        .map_err(|e| format!("kind {} is cluster-scoped, and {e}", self.gvk.kind))?;
                    if let Some(ns) = &self.namespace {
                        tracing::warn!(trigger = %self.trigger, kind = %self.gvk.kind, namespace = %ns,
                            "the kind is cluster-scoped; namespace ignored");
                    }
                    None
                }
                (namespace, true) => namespace.clone(),
            };
            let key =
                WatchKey { resource, namespace, fields: self.fields.clone(), identity: self.actor.identity.clone() };
            // The last state of objects is kept only where a delete or `oldObject` shows it.
            let keep_objects = self.interest.delete || self.needs_old;
            let scope = format!("{}{}", WatchKey { fields: String::new(), ..key.clone() }.scope(), self.selecting);
            let position = Position::load(self.state.clone(), scope, keep_objects).await?;
            let subscriber = Subscriber {
                trigger: self.trigger.clone(),
                sink,
                interest: Box::new(self.interest),
                selector: self.selector.clone(),
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
    use ktrigger_core::{SourceFactory, TypedSource};
    use serde_json::{Value, json};

    use super::*;
    use crate::IdentityPolicy;

    fn context() -> BuildContext {
        BuildContext::new(TriggerId { namespace: String::new(), service: "s".into(), trigger: "t".into() })
    }

    fn load_error(properties: Value) -> String {
        let factory = TypedSource::new(ResourceWatcherFactory::new(Cluster::offline()));
        factory.build(&properties, &context()).err().expect("refused").to_string()
    }

    #[test]
    fn valid_properties_load_without_a_cluster() {
        let factory = TypedSource::new(ResourceWatcherFactory::new(Cluster::offline()));
        let properties = json!({"apiVersion": "example.com/v1", "kind": "Widget", "namespace": "",
            "events": ["delete"], "matchingLabels": {"app": "x"}, "labelSelector": "tier in (a,b)",
            "fieldSelector": "metadata.namespace!=kube-system", "name": "w1", "replayExisting": true,
            "clusters": ["local"]});
        assert!(factory.build(&properties, &context()).is_ok());
    }

    #[test]
    fn bad_properties_are_refused_naming_the_property() {
        for (properties, expected) in [
            (json!({"kind": "ConfigMap"}), "missing field `apiVersion`"),
            (json!({"apiVersion": "v1", "kind": "ConfigMap", "events": ["patch"]}), "properties.events[0]"),
            (json!({"apiVersion": "a/b/c", "kind": "X"}), "properties.apiVersion"),
            (json!({"apiVersion": "v1", "kind": "Config Map"}), "properties.kind"),
            (json!({"apiVersion": "v1", "kind": "Pod", "labelSelector": "app in web"}), "properties.labelSelector"),
            (json!({"apiVersion": "v1", "kind": "Pod", "fieldSelector": "status.phase"}), "properties.fieldSelector"),
            (json!({"apiVersion": "v1", "kind": "Pod", "resync": "1m"}), "unknown field `resync`"),
            (
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "clusters": ["local", "cn-shanghai"]}),
                "properties.clusters: cluster \"cn-shanghai\" cannot be watched: only \"local\"",
            ),
        ] {
            let error = load_error(properties.clone());
            assert!(error.contains(expected), "{properties}: {error}");
        }
    }

    #[test]
    fn no_cluster_is_a_load_error_when_running() {
        let cluster = Cluster::make(
            Err("kubeconfig /nope does not exist".into()),
            IdentityPolicy::local(),
            Default::default(),
            false,
            Default::default(),
            Default::default(),
        );
        let error = TypedSource::new(ResourceWatcherFactory::new(cluster))
            .build(&json!({"apiVersion": "v1", "kind": "ConfigMap"}), &context())
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("needs a Kubernetes cluster") && error.contains("/nope does not exist"), "{error}");
    }

    #[test]
    fn each_trigger_gets_only_the_event_types_it_asked_for() {
        let interest = ResourceInterest { create: false, update: true, delete: false };
        let change = |kind| Change::new(kind, json!({}));
        assert!(interest.shape(&change(ChangeKind::Create)).is_none());
        assert_eq!(interest.shape(&change(ChangeKind::Update)).unwrap().event_type, "update");
        assert!(interest.shape(&change(ChangeKind::Delete)).is_none());
    }
}
