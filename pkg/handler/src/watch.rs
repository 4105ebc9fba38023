//! What a handler watches ([`Watch`]), and how its changes come from the shared WatchHub.

use std::marker::PhantomData;
use std::sync::Arc;

use ktrigger_core::{Envelope, Event, EventSink, TriggerId};
use ktrigger_kube::Identity;
use ktrigger_kube::hub::{Change as HubChange, EventShape, Interest, Subscriber, Subscription, WatchKey};
use ktrigger_kube::selector::{ObjectSelector, canonical_labels};
use kube::Client;
use kube::api::{ApiResource, DynamicObject};
use tokio::sync::mpsc;

use crate::change::Change;
use crate::queue::Key;

/// Changes buffered between a watch and the queue; the watch waits while it is full.
const FEED_CAPACITY: usize = 256;

/// The objects a handler watches: a resource type, optionally one namespace and a label
/// selector.
///
/// ```
/// use k8s_openapi::api::apps::v1::Deployment;
/// use ktrigger_handler::Watch;
///
/// let deployments = Watch::<Deployment>::new().namespace("apps").labels("tier=web");
/// # let _ = deployments;
/// ```
pub struct Watch<K> {
    pub(crate) resource: ApiResource,
    pub(crate) namespace: Option<String>,
    pub(crate) labels: Option<String>,
    _objects: PhantomData<fn(K)>,
}

impl<K> std::fmt::Debug for Watch<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("resource", &self.resource.plural)
            .field("namespace", &self.namespace)
            .field("labels", &self.labels)
            .finish()
    }
}

impl<K: kube::Resource<DynamicType = ()>> Watch<K> {
    /// Every object of `K`, in all namespaces.
    pub fn new() -> Self {
        Watch::of(ApiResource::erase::<K>(&()))
    }
}

impl<K: kube::Resource<DynamicType = ()>> Default for Watch<K> {
    fn default() -> Self {
        Watch::new()
    }
}

impl Watch<DynamicObject> {
    /// Every object of a resource known only at run time (from discovery, or
    /// `ApiResource::from_gvk`), in all namespaces.
    pub fn dynamic(resource: ApiResource) -> Self {
        Watch::of(resource)
    }
}

impl<K> Watch<K> {
    fn of(resource: ApiResource) -> Self {
        Watch { resource, namespace: None, labels: None, _objects: PhantomData }
    }

    /// Only the objects of `namespace`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into()).filter(|ns| !ns.is_empty());
        self
    }

    /// Only the objects whose labels match `selector` (`app=web,tier!=db`, `env in (a,b)`).
    pub fn labels(mut self, selector: impl Into<String>) -> Self {
        self.labels = Some(selector.into()).filter(|s| !s.trim().is_empty());
        self
    }

    /// The canonical label selector, or why it does not parse.
    pub(crate) fn canonical_labels(&self) -> Result<String, String> {
        self.labels.as_deref().map_or(Ok(String::new()), canonical_labels)
    }
}

/// A registered handler's watch, checked.
pub(crate) struct Target {
    pub(crate) resource: ApiResource,
    pub(crate) namespace: Option<String>,
    pub(crate) labels: String,
}

impl Target {
    /// What is watched, for messages.
    pub(crate) fn describe(&self) -> String {
        let r = &self.resource;
        let mut text = if r.group.is_empty() {
            format!("{}/{}", r.version, r.plural)
        } else {
            format!("{}.{}/{}", r.plural, r.group, r.version)
        };
        match &self.namespace {
            Some(ns) => text.push_str(&format!(" in namespace {ns}")),
            None => text.push_str(" in all namespaces"),
        }
        if !self.labels.is_empty() {
            text.push_str(&format!(" with labels {:?}", self.labels));
        }
        text
    }

    /// The hub's key for this watch, made as this process's own identity.
    fn key(&self) -> WatchKey {
        WatchKey {
            resource: self.resource.clone(),
            namespace: self.namespace.clone(),
            fields: String::new(),
            identity: Identity::Own,
        }
    }

    /// Subscribes to the hub's watch, asking for every change, the previous states of updates
    /// and the objects that exist now (as adds).
    pub(crate) fn subscribe(
        &self,
        hub: &ktrigger_kube::WatchHub,
        client: &Client,
        loop_name: &str,
        handler: &str,
    ) -> Result<(Subscription, mpsc::Receiver<Envelope>), String> {
        let (sink, events) = EventSink::channel(FEED_CAPACITY);
        let (selector, _) = ObjectSelector::new(&self.labels, "")?;
        let subscriber = Subscriber {
            trigger: TriggerId {
                namespace: String::new(),
                service: format!("event-loop/{loop_name}"),
                trigger: handler.to_string(),
            },
            sink,
            interest: Box::new(Everything),
            selector,
            needs_old: true,
            replay_existing: true,
            position: None,
        };
        Ok((hub.subscribe(client, self.key(), subscriber)?, events))
    }
}

/// Wants every change, as is.
struct Everything;

impl Interest for Everything {
    fn shape(&self, change: &HubChange) -> Option<EventShape> {
        Some(EventShape::of_change("event-loop", change))
    }
}

/// The queue key and change of an event from the hub, for handler number `handler`; `None` for
/// an object without a name (which the API server does not serve).
pub(crate) fn to_change(handler: usize, event: Arc<Event>) -> Option<(Key, Change)> {
    let event = Arc::try_unwrap(event).unwrap_or_else(|shared| (*shared).clone());
    let metadata = &event.object["metadata"];
    let name = metadata["name"].as_str().filter(|name| !name.is_empty())?.to_string();
    let namespace = metadata["namespace"].as_str().filter(|ns| !ns.is_empty()).map(str::to_string);
    let key = Key { handler, namespace, name };
    let object = Arc::new(event.object);
    let change = match event.meta.event_type.as_str() {
        "create" => Change::Add(object),
        "delete" => Change::Delete(object),
        _ => Change::Update { old: event.old_object.map(Arc::new), new: object },
    };
    Some((key, change))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("metadata".to_string()),
                        Just("name".to_string()),
                        Just("namespace".to_string()),
                        ".{0,6}"
                    ],
                    inner,
                    0..4
                )
                .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Any object, of any change type: a key when it has a name, nothing otherwise, no panic.
        #[test]
        fn any_object_becomes_a_key_and_change_or_nothing(
            object in json_value(),
            old in proptest::option::of(json_value()),
            kind in prop_oneof![Just("create".to_string()), Just("update".to_string()), Just("delete".to_string()), ".{0,8}"],
        ) {
            let mut event = Event::new("event-loop", &kind, object.clone());
            event.old_object = old;
            let name = object["metadata"]["name"].as_str().filter(|n| !n.is_empty());
            match to_change(3, Arc::new(event)) {
                Some((key, change)) => {
                    prop_assert_eq!(Some(key.name.as_str()), name);
                    prop_assert_eq!(key.handler, 3);
                    let expected = match kind.as_str() { "create" => "add", "delete" => "delete", _ => "update" };
                    prop_assert_eq!(change.kind(), expected);
                }
                None => prop_assert!(name.is_none()),
            }
        }
    }

    #[test]
    fn cluster_scoped_objects_have_no_namespace() {
        let event = Event::new("event-loop", "create", json!({"metadata": {"name": "node-1", "namespace": ""}}));
        let (key, _) = to_change(0, Arc::new(event)).unwrap();
        assert_eq!(key.to_string(), "node-1");
        assert_eq!(key.namespace, None);
    }
}
