//! The ktrigger engine: the event context, CEL filters, templates, the shared router, delivery
//! queues with retries, and the supervisor that runs one isolated task per trigger.
//!
//! It knows nothing of Kubernetes (its dependency tree holds neither `kube` nor `k8s-openapi`):
//! sources and destinations plug in as types registered with the engine, and the Kubernetes ones
//! live in other crates of the workspace.
//!
//! # Embedding the engine
//!
//! 1. Describe each custom type as a properties struct deriving `Deserialize` and `JsonSchema`
//!    (its doc comments are what `ktrigger destinations` prints) and implement
//!    [`DestinationType`] (or [`SourceType`]) for a unit struct naming it.
//! 2. Put an [`Engine`] together with [`Engine::builder`]: the types, and optionally a
//!    [`StateStore`] ([`RedbStore`], [`NatsStore`]; memory by default), a [`SecretReader`] and
//!    limits.
//! 3. Load TriggerService text with [`load_text`] (or build a [`TriggerServiceSpec`]) and hand
//!    each spec to [`Engine::apply`]; [`Engine::status`] and [`Engine::snapshot`] say what the
//!    triggers did; [`Engine::shutdown`] drains the delivery queues.
//!
//! The example below registers a destination type `collect` that keeps the messages it receives,
//! and a source type `tick` that sends a few numbered events, then runs a trigger from a YAML string
//! with neither a cluster nor a network:
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use std::time::Duration;
//!
//! use async_trait::async_trait;
//! use ktrigger_core::{
//!     BuildContext, DeliveryError, DeliveryRequest, Destination, DestinationType, Engine, Event,
//!     EventSink, PropertyError, Receipt, Source, SourceError, SourceType, Template,
//! };
//! use schemars::JsonSchema;
//! use serde::Deserialize;
//! use tokio_util::sync::CancellationToken;
//!
//! /// Keeps every rendered message in memory.
//! #[derive(Deserialize, JsonSchema)]
//! #[serde(deny_unknown_fields)]
//! struct CollectProperties {
//!     /// Template of the message kept for each event.
//!     message: String,
//! }
//!
//! struct Collect(Arc<Mutex<Vec<String>>>);
//!
//! struct Collector {
//!     message: Template,
//!     kept: Arc<Mutex<Vec<String>>>,
//! }
//!
//! #[async_trait]
//! impl Destination for Collector {
//!     fn render(&self, request: &DeliveryRequest<'_>) -> Result<serde_json::Value, DeliveryError> {
//!         let text = self.message.render(&request.scope()).map_err(DeliveryError::permanent)?;
//!         Ok(serde_json::json!({ "message": text }))
//!     }
//!
//!     async fn deliver(&self, request: &DeliveryRequest<'_>) -> Result<Receipt, DeliveryError> {
//!         let text = self.message.render(&request.scope()).map_err(DeliveryError::permanent)?;
//!         self.kept.lock().unwrap().push(text);
//!         Ok(Receipt::default())
//!     }
//! }
//!
//! impl DestinationType for Collect {
//!     type Properties = CollectProperties;
//!     const NAME: &'static str = "collect";
//!     const EXAMPLE: &'static str = "type: collect\nproperties: {message: \"{{ object.n }}\"}";
//!
//!     fn build(&self, properties: CollectProperties, _: &BuildContext) -> Result<Arc<dyn Destination>, PropertyError> {
//!         let message = Template::compile(&properties.message).map_err(|e| PropertyError::new("message", e))?;
//!         Ok(Arc::new(Collector { message, kept: self.0.clone() }))
//!     }
//! }
//!
//! /// Sends `count` events, one every 10ms.
//! #[derive(Deserialize, JsonSchema)]
//! #[serde(deny_unknown_fields)]
//! struct TickProperties {
//!     /// How many events to send.
//!     count: u32,
//! }
//!
//! struct Tick;
//!
//! struct Ticker(u32);
//!
//! #[async_trait]
//! impl Source for Ticker {
//!     async fn run(&self, sink: EventSink, cancel: CancellationToken) -> Result<(), SourceError> {
//!         for n in 0..self.0 {
//!             let event = Event::new("tick", "tick", serde_json::json!({"n": n}));
//!             if !sink.send(event).await {
//!                 break;
//!             }
//!         }
//!         cancel.cancelled().await;
//!         Ok(())
//!     }
//! }
//!
//! impl SourceType for Tick {
//!     type Properties = TickProperties;
//!     const NAME: &'static str = "tick";
//!     const EXAMPLE: &'static str = "type: tick\nproperties: {count: 3}";
//!
//!     fn build(&self, properties: TickProperties, _: &BuildContext) -> Result<Arc<dyn Source>, PropertyError> {
//!         Ok(Arc::new(Ticker(properties.count)))
//!     }
//! }
//!
//! const SERVICE: &str = r#"
//! apiVersion: ktrigger.dev/v1alpha1
//! kind: TriggerService
//! metadata: {name: demo, namespace: default}
//! spec:
//!   triggers:
//!     - name: even
//!       source: {type: tick, properties: {count: 4}}
//!       filter: object.n % 2 == 0
//!       destinations:
//!         - type: collect
//!           properties: {message: "tick {{ object.n }}"}
//! "#;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let kept = Arc::new(Mutex::new(Vec::new()));
//! let mut engine = Engine::builder().source_type(Tick).destination_type(Collect(kept.clone())).build();
//! let config = ktrigger_core::load_text("demo.yaml", SERVICE);
//! assert!(config.errors.is_empty(), "{:?}", config.errors);
//! for service in &config.services {
//!     let report = engine.apply(&service.namespace, &service.name, &service.spec).await;
//!     assert!(report.skipped.is_empty(), "{:?}", report.skipped);
//! }
//! for _ in 0..500 {
//!     if kept.lock().unwrap().len() >= 2 {
//!         break;
//!     }
//!     tokio::time::sleep(Duration::from_millis(10)).await;
//! }
//! engine.shutdown(Duration::from_secs(1)).await;
//! assert_eq!(*kept.lock().unwrap(), ["tick 0", "tick 2"]);
//! # }
//! ```
//!
//! Custom types sit next to the built-in ones: `ktrigger_sources::register`,
//! `ktrigger_destinations::register` and `ktrigger_kube::register` fill a [`Registry`] that
//! [`EngineBuilder::registry`] starts from.

#![deny(missing_docs)]

mod bounded;
mod builder;
mod cel;
mod config;
mod credentials;
mod delivery;
mod egress;
mod engine;
mod event;
mod mappings;
// `prepare`, `router` and `trace` are reachable from the property tests (`tests/properties.rs`)
// and the per-event benchmark (`benches/per_event.rs`) only; they are not part of the API.
#[doc(hidden)]
pub mod prepare;
mod properties;
mod registry;
#[doc(hidden)]
pub mod router;
mod secrets;
mod state;
mod stats;
pub mod sync;
mod template;
pub mod tls;
#[doc(hidden)]
pub mod trace;
mod typed;

pub use builder::EngineBuilder;
pub use cel::limits::COST_LIMIT as CEL_COST_LIMIT;
pub use cel::{CelError, CelExpr, Vars};
pub use config::{LoadedConfig, LoadedService, default_name, expand_paths, load_paths, load_text};
pub use credentials::{CredentialPolicy, MAX_FILE_BYTES as MAX_CREDENTIAL_FILE_BYTES};
pub use delivery::{
    DEFAULT_MAX_QUEUE_BYTES, DEFAULT_MAX_QUEUE_BYTES_PER_TRIGGER, Delivery, DeliveryQueue, QueueError, QueueLimits,
};
pub use egress::{EgressError, EgressLayer, EgressPolicy, EgressRefused, EgressResolver, find_refusal, parse_cidr};
pub use engine::{ApplyReport, Engine, EngineObserver, EngineOptions, ShutdownReport, TriggerMetrics};
pub use event::{CONTEXT_NAMES, Event, EventMeta, SharedEvent, TriggerId, rfc3339, stable_id};
pub use ktrigger_api::{
    BatchSpec, DedupSpec, DeliveryOrdering, DestinationSpec, OverflowPolicy, RateLimitSpec, RetrySpec, SourceSpec,
    Trigger, TriggerServiceSpec, TriggerStatus,
};
pub use mappings::{Annotation, EventMapping, EventMappings};
pub use prepare::TriggerProblem;
pub use properties::{PropertyError, parse_properties};
pub use registry::{
    BuildContext, DeliveryError, DeliveryRequest, Destination, DestinationFactory, Envelope, EventSink, Handled,
    Outcome, PropertyDoc, Receipt, Registry, Source, SourceError, SourceFactory, SourceNeeds, Tracked, TypeDoc,
};
pub use router::{DEFAULT_MAX_DEDUP_KEYS, DEFAULT_MAX_DEDUP_KEYS_PER_TRIGGER, DedupCounts, DedupLimits};
pub use secrets::{ClusterSecrets, Secret, SecretKeyRef, SecretReader, SecretRef, no_cluster, trigger_references};
pub use state::memory::MemoryStore;
pub use state::nats::{DEFAULT_PREFIX as NATS_DEFAULT_PREFIX, NatsAuth, NatsOptions, NatsStore, NatsTls};
pub use state::redb::{FILE_NAME as REDB_FILE_NAME, MovedAside, RedbStore};
pub use state::{Commit, SCHEMA_VERSION, SourceState, StateStore, StoreError, StoreMetrics, trigger_prefix};
pub use stats::{DestinationCounts, LatencySnapshot, StatsSnapshot};
pub use template::{MAX_OUTPUT as MAX_TEMPLATE_OUTPUT, MAX_TEMPLATE, Template, TemplateScope};
pub use trace::TARGET as TRACE_TARGET;
pub use typed::{DestinationType, SourceType, TypedDestination, TypedSource, properties_schema};
