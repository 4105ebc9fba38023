//! The types of a `TriggerService`'s spec and of what the engine reports per trigger.
//!
//! They hold no Kubernetes types: with the `crd` feature the spec also derives the custom
//! resource (see [`crate::crd`]) and the CRD validation rules (`x-kubernetes-validations`).

#[cfg(feature = "crd")]
use crate::crd::TriggerServiceStatus;
#[cfg(feature = "crd")]
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a TriggerService asks for: a list of triggers, each a source, a filter and destinations.
// The other types derive `KubeSchema` for their rules; this one cannot: it copies the struct to
// derive the schema, and the copy of `worker` (never serialized) would be dead code.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[cfg_attr(
    feature = "crd",
    derive(CustomResource),
    kube(
        group = "ktrigger.dev",
        version = "v1alpha1",
        kind = "TriggerService",
        namespaced,
        shortname = "kts",
        status = "TriggerServiceStatus",
        printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
        printcolumn = r#"{"name":"Triggers","type":"string","jsonPath":".status.readyTriggers"}"#,
        printcolumn = r#"{"name":"Fired","type":"integer","jsonPath":".status.fired"}"#,
        printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.failed"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
        category = "all",
        category = "ktrigger"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TriggerServiceSpec {
    /// ServiceAccount whose identity mutating destinations act as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// The triggers of this service; names are unique within it.
    #[schemars(length(max = crate::schema::MAX_TRIGGERS))]
    #[cfg_attr(feature = "crd", schemars(transform = crate::crd::unique_trigger_names))]
    pub triggers: Vec<Trigger>,
    /// kube-trigger's worker settings: read so its files load, never used (loading them warns).
    #[serde(default, skip_serializing)]
    #[schemars(skip)]
    pub worker: Option<Value>,
}

/// One source → filter → destinations chain.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "crd", derive(KubeSchema))]
#[cfg_attr(not(feature = "crd"), derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "crd", x_kube(
    validation = Rule::new(crate::crd::HAS_DESTINATION)
        .message("at least one destination is required (destinations, or kube-trigger's action)")
        .field_path(".destinations")
        .reason(Reason::FieldValueRequired),
    validation = Rule::new(crate::crd::DESTINATIONS_OR_ACTION)
        .message("set either destinations or action, not both")
        .field_path(".action")
))]
pub struct Trigger {
    /// Unique name within the TriggerService; `trigger-<index>` when omitted (kube-trigger files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::schema::MAX_NAME), transform = crate::schema::not_nullable)]
    #[cfg_attr(feature = "crd", x_kube(validation = Rule::new(crate::crd::NAME_FORM)
        .message("use lower-case letters, digits, '-' or '.', not starting or ending with '-'")))]
    pub name: Option<String>,
    /// Where events come from.
    pub source: SourceSpec,
    /// CEL expression over the event context; every event passes when it is empty or absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::schema::MAX_EXPRESSION))]
    pub filter: Option<String>,
    /// Drop repeats of the same event within a window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<DedupSpec>,
    /// Cap the rate at which this trigger fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    /// Wait for this quiet period (e.g. `5s`, at most 30 days) and fire once with the latest event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::validate::MAX_DURATION_TEXT))]
    pub debounce: Option<String>,
    /// Where matching events are delivered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::schema::MAX_DESTINATIONS))]
    pub destinations: Vec<DestinationSpec>,
    /// kube-trigger's single destination; an alias of a one-element `destinations`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = crate::schema::not_nullable)]
    pub action: Option<DestinationSpec>,
    /// Receives deliveries that failed for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DestinationSpec>,
}

/// A source type and its free-form properties.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "crd", derive(KubeSchema))]
#[cfg_attr(not(feature = "crd"), derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceSpec {
    /// Source type name, e.g. `cron`, `webhook`, `resource-watcher`.
    #[serde(rename = "type")]
    #[schemars(length(max = crate::schema::MAX_TYPE))]
    #[cfg_attr(feature = "crd", x_kube(validation = Rule::new(crate::crd::NOT_BLANK)
        .message("a source type is required")
        .reason(Reason::FieldValueRequired)))]
    pub type_name: String,
    /// Type-specific settings (see `ktrigger sources`).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    #[schemars(schema_with = "crate::schema::free_form")]
    pub properties: Value,
}

/// A destination type, its free-form properties and how deliveries to it are retried.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "crd", derive(KubeSchema))]
#[cfg_attr(not(feature = "crd"), derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationSpec {
    /// Destination type name, e.g. `webhook`, `log`, `kagent`.
    #[serde(rename = "type")]
    #[schemars(length(max = crate::schema::MAX_TYPE))]
    #[cfg_attr(feature = "crd", x_kube(validation = Rule::new(crate::crd::NOT_BLANK)
        .message("a destination type is required")
        .reason(Reason::FieldValueRequired)))]
    pub type_name: String,
    /// Type-specific settings (see `ktrigger destinations`).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    #[schemars(schema_with = "crate::schema::free_form")]
    pub properties: Value,
    /// Retry policy for failed deliveries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// Time limit of one delivery attempt, e.g. `30s`, at most 30 days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::validate::MAX_DURATION_TEXT))]
    pub timeout: Option<String>,
    /// Deliveries this destination's queue holds, those being sent included; when it is full the
    /// source waits (`overflow: backpressure`) or new deliveries are dead-lettered (`deadLetter`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub queue_size: Option<u32>,
    /// Deliveries sent to this destination at the same time; default 16, at most 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub concurrency: Option<u32>,
    /// Which deliveries must keep their order: `perObject` (the default for `resource-watcher`
    /// and `k8s-events` sources) never sends two deliveries of one object at the same time nor
    /// out of order; `none` (the default for other sources) sends in any order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering: Option<DeliveryOrdering>,
    /// What happens to a new delivery when the queue is full: `backpressure` (default) makes the
    /// source wait (Kubernetes, cron, http-poller and plugin sources pause; inbound webhooks
    /// answer 503 with Retry-After); `deadLetter` dead-letters it at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overflow: Option<OverflowPolicy>,
    /// Send several deliveries in one request (webhook and log destinations only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchSpec>,
}

/// Which deliveries of one destination keep their order.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DeliveryOrdering {
    /// Any order, as many at once as `concurrency` allows.
    None,
    /// One delivery at a time per object, in the order the source saw them.
    PerObject,
}

/// What a full delivery queue does to new deliveries.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OverflowPolicy {
    /// The source waits for room (an inbound webhook answers 503 with Retry-After).
    Backpressure,
    /// The new delivery is dead-lettered at once.
    DeadLetter,
}

/// Batching: up to `maxEvents` deliveries in one request, none waiting more than `maxDelay`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchSpec {
    /// Most deliveries in one request, 1 to 1000.
    #[schemars(range(min = 1, max = 1000))]
    pub max_events: u32,
    /// Longest a delivery waits for others to join its batch, e.g. `100ms`; default `1s`, at
    /// most 30 days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::validate::MAX_DURATION_TEXT))]
    pub max_delay: Option<String>,
}

/// Retry policy: exponential backoff with jitter between `backoff` and `maxBackoff`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts in all, the first included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_attempts: Option<u32>,
    /// Delay before the first retry, e.g. `1s`, at most 30 days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::validate::MAX_DURATION_TEXT))]
    pub backoff: Option<String>,
    /// Longest delay between attempts, e.g. `2m`, at most 30 days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::validate::MAX_DURATION_TEXT))]
    pub max_backoff: Option<String>,
}

/// Deduplication: events with the same key within `window` fire once.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "crd", derive(KubeSchema))]
#[cfg_attr(not(feature = "crd"), derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DedupSpec {
    /// CEL expression computing the key, e.g. `object.metadata.name`.
    #[schemars(length(max = crate::schema::MAX_EXPRESSION))]
    #[cfg_attr(feature = "crd", x_kube(validation = Rule::new(crate::crd::NOT_BLANK)
        .message("a dedup key expression is required")
        .reason(Reason::FieldValueRequired)))]
    pub key: String,
    /// How long a key stays firing after its last repeat, e.g. `10m`, at most 30 days.
    #[schemars(length(max = crate::validate::MAX_DURATION_TEXT))]
    pub window: String,
}

/// Rate limit of one trigger.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Events that may fire per minute.
    #[schemars(range(min = 1))]
    pub per_minute: u32,
    /// Events that may fire at once; defaults to `perMinute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub burst: Option<u32>,
}

/// What one trigger has done.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggerStatus {
    /// Trigger name.
    pub name: String,
    /// Whether the trigger loaded and its source runs.
    pub ready: bool,
    /// Events its source produced.
    #[serde(default)]
    pub received: u64,
    /// The same as `received`, under its former name; written for one more version so that
    /// readers of the old field keep working.
    #[serde(default)]
    pub matched: u64,
    /// Events dropped by the filter, dedup, rate limit or debounce.
    pub filtered: u64,
    /// Events passed on to the destinations.
    pub fired: u64,
    /// Failed delivery attempts.
    pub failed: u64,
    /// Deliveries that succeeded.
    #[serde(default)]
    pub delivered: u64,
    /// Events whose filter could not be evaluated (counted as not matched).
    #[serde(default)]
    pub filter_errors: u64,
    /// Deliveries given up on.
    #[serde(default)]
    pub dead_lettered: u64,
    /// Of `deadLettered`, deliveries refused because the trigger's or the total queue byte
    /// limit was reached.
    #[serde(default)]
    pub queue_byte_limited: u64,
    /// Events held back because a destination queue was full: the source waited for room, or
    /// the inbound webhook's sender was told to retry (`503`).
    #[serde(default)]
    pub backpressured: u64,
    /// Dedup keys forgotten before their time to stay within the key limits.
    #[serde(default)]
    pub dedup_evicted: u64,
    /// Deliveries found in the state store when the trigger started, continued from where a
    /// previous run left them.
    #[serde(default)]
    pub restored_deliveries: u64,
    /// Times the source was restarted after an error or panic.
    #[serde(default)]
    pub restarts: u64,
    /// When it last fired (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fired: Option<String>,
    /// The last error it met.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// What a destination answered to the latest delivery it accepted, e.g. the task of a kagent
    /// agent run: `kagent#0: task 9f1c… completed in session 3a7e…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivery: Option<String>,
    /// Current dedup entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active_events: Vec<ActiveEvent>,
}

/// A dedup entry as shown in status.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActiveEvent {
    /// The dedup key.
    pub key: String,
    /// `firing` while repeats arrive within the window, `resolved` after.
    pub state: String,
    /// First occurrence (RFC 3339).
    pub first_seen: String,
    /// Latest occurrence (RFC 3339).
    pub last_seen: String,
}

/// kube-trigger's plain configuration file: `triggers:` at the top level.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TriggerFile {
    /// The triggers of the file.
    pub triggers: Vec<Trigger>,
}

impl Trigger {
    /// The destinations of this trigger, `action` included.
    pub fn all_destinations(&self) -> impl Iterator<Item = &DestinationSpec> {
        self.destinations.iter().chain(self.action.iter())
    }
}
