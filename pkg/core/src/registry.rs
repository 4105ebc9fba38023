//! The traits sources and destinations implement, and the registry that finds them by type name.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::event::{Event, SharedEvent, TriggerId};
use crate::properties::PropertyError;
use crate::secrets::ClusterSecrets;
use crate::state::SourceState;
use crate::template::TemplateScope;

/// What a source or destination is told when it is built.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// The trigger it belongs to.
    pub trigger: TriggerId,
    /// Whether the engine runs with `--dry-run` (nothing may change outside).
    pub dry_run: bool,
    /// The ServiceAccount (in the trigger's namespace) that destinations changing the cluster act
    /// as: the TriggerService's `serviceAccountName`. `None`: the engine's own identity.
    pub service_account: Option<String>,
    /// Values of the Kubernetes Secrets the trigger's properties refer to (`secretKeyRef`).
    pub secrets: ClusterSecrets,
    /// Where the source keeps its position across restarts.
    pub state: SourceState,
    /// What the rest of the trigger reads from the source's events.
    pub needs: SourceNeeds,
}

impl BuildContext {
    /// The context of `trigger`: not a dry run, the engine's own identity, no Secrets read.
    pub fn new(trigger: TriggerId) -> Self {
        BuildContext {
            trigger,
            dry_run: false,
            service_account: None,
            secrets: ClusterSecrets::default(),
            state: SourceState::default(),
            needs: SourceNeeds::default(),
        }
    }
}

/// Why a trigger did not fire an event. Only the kind: a reason may quote the event or the filter,
/// and the kind is what a sender may be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// The filter returned false.
    FilteredOut,
    /// The filter or dedup key could not be evaluated.
    FilterError,
    /// A duplicate of a key still firing.
    Duplicate,
    /// Over the trigger's rate limit.
    RateLimited,
}

/// How a trigger handled an event its source handed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// It fired: its deliveries are stored (or, in a dry run, printed).
    Fired,
    /// It is held by the trigger's debounce, stored, and fires unless a newer event replaces it.
    Held,
    /// It did not fire: what happened, and why in words (for logs, never for the sender).
    Dropped(Outcome, String),
    /// It could not be stored or queued: the source must not commit its position past it, and
    /// a sender should retry.
    NotStored(String),
}

/// One event on its way from a source to its trigger, with where to say how it was handled.
#[derive(Debug)]
pub struct Envelope {
    /// The event.
    pub event: SharedEvent,
    /// Told how the event was handled, when the source asked.
    pub handled: Option<oneshot::Sender<Handled>>,
    /// Whether the source can wait for room in a full delivery queue (its stream pauses); when
    /// it cannot, the event is answered [`Handled::NotStored`] at once and the sender retries.
    pub can_wait: bool,
}

impl Envelope {
    /// Tells the source how the event was handled (nothing when it did not ask).
    pub fn answer(self, handled: Handled) {
        if let Some(sender) = self.handled {
            let _ = sender.send(handled);
        }
    }
}

/// How an event handed over with [`EventSink::send_tracked`] will be handled.
#[derive(Debug)]
pub struct Tracked(oneshot::Receiver<Handled>);

impl Tracked {
    /// Waits until the trigger has handled the event; a trigger that stopped first did not
    /// store it.
    pub async fn handled(self) -> Handled {
        self.0.await.unwrap_or_else(|_| Handled::NotStored("the trigger stopped before handling the event".into()))
    }
}

/// Where a source sends the events it produces.
#[derive(Debug, Clone)]
pub struct EventSink {
    sender: mpsc::Sender<Envelope>,
}

impl EventSink {
    /// A sink and the receiving end the trigger reads from.
    pub fn channel(capacity: usize) -> (EventSink, mpsc::Receiver<Envelope>) {
        let (sender, receiver) = mpsc::channel(capacity);
        (EventSink { sender }, receiver)
    }

    /// Hands an event to the trigger, waiting while it is busy. False when the trigger has stopped.
    pub async fn send(&self, event: Event) -> bool {
        self.send_shared(Arc::new(event)).await
    }

    /// Hands an already shared event to the trigger (one event fanned out to several triggers).
    pub async fn send_shared(&self, event: SharedEvent) -> bool {
        self.sender.send(Envelope { event, handled: None, can_wait: true }).await.is_ok()
    }

    /// Hands an event to the trigger and returns at once with how to learn how it was handled:
    /// a source commits its position past the event only once that says it is stored or
    /// dropped. `None` when the trigger has stopped.
    /// The trigger waits for room in its delivery queues, so the source pauses while they are full.
    pub async fn send_tracked(&self, event: SharedEvent) -> Option<Tracked> {
        self.hand_over(event, true).await
    }

    /// Like [`send_tracked`](Self::send_tracked), for a source whose sender retries later (an
    /// inbound webhook): when a delivery queue is full the event is answered
    /// [`Handled::NotStored`] at once instead of waiting for room.
    pub async fn offer_tracked(&self, event: SharedEvent) -> Option<Tracked> {
        self.hand_over(event, false).await
    }

    async fn hand_over(&self, event: SharedEvent, can_wait: bool) -> Option<Tracked> {
        let (handled, receiver) = oneshot::channel();
        self.sender.send(Envelope { event, handled: Some(handled), can_wait }).await.ok()?;
        Some(Tracked(receiver))
    }
}

/// Why a source stopped.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

/// A running producer of events for one trigger.
#[async_trait]
pub trait Source: Send + Sync {
    /// Produces events into `sink` until `cancel` fires. An `Err` is reported and the source is
    /// run again after a backoff; state kept in `self` (e.g. change detection) survives that.
    async fn run(&self, sink: EventSink, cancel: CancellationToken) -> Result<(), SourceError>;
}

/// A sent delivery that the destination accepted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Receipt {
    /// What the receiver said, e.g. an HTTP status or a task id; shown in logs and status.
    pub detail: Option<String>,
}

/// Why a delivery attempt failed, and whether retrying can help.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeliveryError {
    /// Retrying may succeed (5xx, 408, 429, timeouts, connection errors).
    #[error("{reason}")]
    Transient {
        /// What went wrong; never contains credentials.
        reason: String,
        /// How long the receiver asked us to wait (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// Retrying cannot succeed (4xx other than 408/429, an invalid request or response).
    #[error("{reason}")]
    Permanent {
        /// What went wrong; never contains credentials.
        reason: String,
    },
}

impl DeliveryError {
    /// A transient failure without a Retry-After hint.
    pub fn transient(reason: impl Into<String>) -> Self {
        DeliveryError::Transient { reason: reason.into(), retry_after: None }
    }

    /// A permanent failure.
    pub fn permanent(reason: impl Into<String>) -> Self {
        DeliveryError::Permanent { reason: reason.into() }
    }
}

/// What a destination is asked to deliver.
#[derive(Debug, Clone)]
pub struct DeliveryRequest<'a> {
    /// Unique id of this delivery (stable across its retries).
    pub id: &'a str,
    /// The trigger that fired.
    pub trigger: &'a TriggerId,
    /// The event that matched.
    pub event: &'a Event,
    /// 1 for the first attempt.
    pub attempt: u32,
}

impl DeliveryRequest<'_> {
    /// The names templates render against: the event context of this trigger.
    pub fn scope(&self) -> TemplateScope {
        TemplateScope::new(self.event, &self.trigger.trigger)
    }
}

/// A place deliveries go to.
#[async_trait]
pub trait Destination: Send + Sync {
    /// What would be sent for this request, as JSON: used by `--dry-run` and in delivery logs.
    /// Must not contain credentials.
    fn render(&self, request: &DeliveryRequest<'_>) -> Result<Value, DeliveryError>;

    /// Sends one delivery attempt.
    async fn deliver(&self, request: &DeliveryRequest<'_>) -> Result<Receipt, DeliveryError>;

    /// Whether [`deliver_batch`](Self::deliver_batch) sends several deliveries in one request;
    /// `batch:` is refused on destinations that cannot.
    fn batches(&self) -> bool {
        false
    }

    /// Sends one attempt of several deliveries in one request (only called when
    /// [`batches`](Self::batches) says so).
    async fn deliver_batch(&self, requests: &[DeliveryRequest<'_>]) -> Result<Receipt, DeliveryError> {
        let _ = requests;
        Err(DeliveryError::permanent("this destination cannot send batches"))
    }
}

/// Documentation of one property of a source or destination type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropertyDoc {
    /// Property name as written in YAML.
    pub name: String,
    /// Whether the type refuses to load without it.
    pub required: bool,
    /// What it does, with its default.
    pub description: String,
}

/// Documentation of a source or destination type, printed by `ktrigger sources|destinations`.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeDoc {
    /// Type name as written in `type:`.
    pub name: String,
    /// Other names accepted for compatibility (e.g. kube-trigger's `cronjob`).
    pub aliases: Vec<String>,
    /// One line on what it is for.
    pub summary: String,
    /// Every property, the required ones first.
    pub properties: Vec<PropertyDoc>,
    /// A YAML example of the `source:` or destination entry.
    pub example: String,
    /// JSON Schema (draft 7, self-contained) of the properties, when the type has one.
    pub schema: Option<Value>,
}

impl TypeDoc {
    /// The documentation of a type from the JSON Schema of its properties: the summary is the
    /// schema's description and each property's description its documentation.
    pub fn from_schema(name: &str, aliases: &[&str], example: &str, schema: Value) -> TypeDoc {
        let mut properties = Vec::new();
        collect_properties(&schema, &mut properties);
        properties.sort_by_key(|p: &PropertyDoc| !p.required);
        TypeDoc {
            name: name.to_string(),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            summary: schema.get("description").and_then(Value::as_str).map(unwrap_lines).unwrap_or_default(),
            properties,
            example: example.to_string(),
            schema: Some(schema),
        }
    }
}

/// The properties of an object schema, and of each alternative of a `oneOf`/`anyOf` (a property
/// found in several is listed once, required only when every alternative requires it).
fn collect_properties(schema: &Value, out: &mut Vec<PropertyDoc>) {
    let required: Vec<&str> =
        schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    if let Some(fields) = schema.get("properties").and_then(Value::as_object) {
        for (name, field) in fields {
            let description = field.get("description").and_then(Value::as_str).map(unwrap_lines).unwrap_or_default();
            let required = required.contains(&name.as_str());
            match out.iter_mut().find(|p| &p.name == name) {
                Some(known) => known.required &= required,
                None => out.push(PropertyDoc { name: name.clone(), required, description }),
            }
        }
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        for alternative in schema.get(key).and_then(Value::as_array).into_iter().flatten() {
            collect_properties(alternative, out);
        }
    }
}

/// A doc comment as one paragraph per blank-line-separated block, its lines joined by spaces.
fn unwrap_lines(text: &str) -> String {
    text.split("\n\n")
        .map(|paragraph| paragraph.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// What the rest of a trigger reads from the events of its source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceNeeds {
    /// The filter, dedup key or a destination reads `oldObject`.
    pub old_object: bool,
}

/// Builds sources of one type from their properties. Built-in types implement
/// [`SourceType`](crate::typed::SourceType) and get this from its adapter.
pub trait SourceFactory: Send + Sync {
    /// Name, aliases, properties, example and schema.
    fn doc(&self) -> &TypeDoc;
    /// Checks `properties` and builds a source for `context` (which says what the trigger
    /// reads, so that a source keeps previous objects only for triggers that use them).
    fn build(&self, properties: &Value, context: &BuildContext) -> Result<Arc<dyn Source>, PropertyError>;
}

/// Builds destinations of one type from their properties. Built-in types implement
/// [`DestinationType`](crate::typed::DestinationType) and get this from its adapter.
pub trait DestinationFactory: Send + Sync {
    /// Name, aliases, properties, example and schema.
    fn doc(&self) -> &TypeDoc;
    /// Checks `properties` (templates included) and builds a destination; errors name the property.
    fn build(&self, properties: &Value, context: &BuildContext) -> Result<Arc<dyn Destination>, PropertyError>;
}

/// Every known source and destination type, by name and alias.
#[derive(Default, Clone)]
pub struct Registry {
    sources: BTreeMap<String, Arc<dyn SourceFactory>>,
    destinations: BTreeMap<String, Arc<dyn DestinationFactory>>,
    missing: Vec<String>,
}

impl Registry {
    /// Adds a source type under its name and aliases.
    pub fn add_source(&mut self, factory: Arc<dyn SourceFactory>) {
        let doc = factory.doc();
        for name in std::iter::once(&doc.name).chain(&doc.aliases) {
            self.sources.insert(name.clone(), factory.clone());
        }
    }

    /// Adds a destination type under its name and aliases.
    pub fn add_destination(&mut self, factory: Arc<dyn DestinationFactory>) {
        let doc = factory.doc();
        for name in std::iter::once(&doc.name).chain(&doc.aliases) {
            self.destinations.insert(name.clone(), factory.clone());
        }
    }

    /// The source type called `name`.
    pub fn source(&self, name: &str) -> Option<&Arc<dyn SourceFactory>> {
        self.sources.get(name)
    }

    /// The destination type called `name`.
    pub fn destination(&self, name: &str) -> Option<&Arc<dyn DestinationFactory>> {
        self.destinations.get(name)
    }

    /// Documentation of every source type, once each, by name.
    pub fn source_docs(&self) -> Vec<&TypeDoc> {
        unique_docs(self.sources.values().map(|f| f.doc()))
    }

    /// Documentation of every destination type, once each, by name.
    pub fn destination_docs(&self) -> Vec<&TypeDoc> {
        unique_docs(self.destinations.values().map(|f| f.doc()))
    }

    /// Names of all source types (aliases excluded), for error messages.
    pub fn source_names(&self) -> Vec<&str> {
        self.source_docs().into_iter().map(|d| d.name.as_str()).collect()
    }

    /// Names of all destination types (aliases excluded), for error messages.
    pub fn destination_names(&self) -> Vec<&str> {
        self.destination_docs().into_iter().map(|d| d.name.as_str()).collect()
    }

    /// Removes the source type called `name` with its aliases; false when there is none.
    pub fn remove_source(&mut self, name: &str) -> bool {
        let Some(factory) = self.sources.get(name).cloned() else {
            return false;
        };
        self.sources.retain(|_, f| !Arc::ptr_eq(f, &factory));
        true
    }

    /// Records why some types may be missing (e.g. a plugin that did not start), for the error
    /// about an unknown type.
    pub fn add_missing(&mut self, reason: String) {
        self.missing.push(reason);
    }

    /// `unknown {kind} type "x"; known types: ...` plus why types may be missing.
    pub fn unknown_type(&self, kind: &str, name: &str) -> String {
        let known = if kind == "source" { self.source_names() } else { self.destination_names() };
        let mut message = format!("unknown {kind} type {name:?}; known types: {}", known.join(", "));
        for reason in &self.missing {
            message.push_str(&format!(" (types may be missing: {reason})"));
        }
        message
    }
}

fn unique_docs<'a>(docs: impl Iterator<Item = &'a TypeDoc>) -> Vec<&'a TypeDoc> {
    let mut by_name: BTreeMap<&'a str, &'a TypeDoc> = BTreeMap::new();
    for doc in docs {
        by_name.insert(&doc.name, doc);
    }
    by_name.into_values().collect()
}
