//! The `http-poller` source: requests a URL on an interval and fires for items that appeared,
//! changed or disappeared since the previous poll.
//!
//! The first poll only records what is there (unless `fireOnStart`). The recorded items live in
//! the source, so they survive a restart of `run`; with a state store they are also stored (one
//! entry per item key, written once the trigger has handled the item's event), so a restarted
//! process compares its first poll with them and fires only what changed meanwhile. A poll that
//! fails (HTTP error, timeout, a body that is not JSON, an `items` expression that fails) is
//! logged and skipped: the recorded items stay as they were and the next poll compares against
//! them.
//!
//! Bounded: a response is read up to `maxResponseBytes`, and its parsed JSON tree is charged
//! against the same limit as it is built (a tree takes several times the bytes of its text), so
//! neither can grow past it; at most `maxItems` items are kept. A poll over a limit, or to an
//! address the egress policy refuses, is a source error (shown in the trigger's status) and the
//! source is started again after a backoff. Redirects are not followed, so request headers
//! (credentials included) only ever go to the configured URL's origin.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ktrigger_core::ClusterSecrets;
use ktrigger_core::PropertyError;
use ktrigger_core::SourceType;
use ktrigger_core::{BuildContext, EventSink, Handled, Source, SourceError};
use ktrigger_core::{CelExpr, Vars};
use ktrigger_core::{Commit, SourceState};
use ktrigger_core::{EgressLayer, EgressPolicy, EgressResolver, find_refusal};
use ktrigger_core::{Event, TriggerId, stable_id};
use ktrigger_core::{SecretKeyRef, SecretRef};
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::json_budget;

const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `maxResponseBytes`.
const DEFAULT_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// Largest `maxResponseBytes` a trigger may ask for.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Default of `maxItems`.
const DEFAULT_ITEMS: usize = 1000;
/// Largest `maxItems` a trigger may ask for.
const MAX_ITEMS: usize = 10_000;
/// Key of the stored marker saying the first poll was recorded.
const POLLED_KEY: &str = "polled";
/// Prefix of the stored items, followed by the hash of the item key.
const ITEM_PREFIX: &str = "item/";

/// Polls a JSON HTTP endpoint and fires create/update/delete for items that changed since the
/// last poll.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpPollerProperties {
    /// http or https URL to request.
    url: String,
    /// HTTP method; default GET.
    #[serde(default)]
    method: Option<String>,
    /// Time between polls, e.g. 30s, 5m; default 60s. The first poll is made at once.
    #[serde(default)]
    interval: Option<String>,
    /// Request headers: name -> literal string, or a secret `{env: NAME}`, `{file: PATH}` or
    /// `{secretKeyRef: {name, key}}` with an optional `prefix` (e.g. `prefix: "Bearer "`), read
    /// when the trigger loads. Default `Accept: application/json`, and
    /// `Content-Type: application/json` when a body is given.
    #[serde(default)]
    #[schemars(schema_with = "header_values")]
    headers: BTreeMap<String, Value>,
    /// Request body (a string); default none.
    #[serde(default)]
    body: Option<String>,
    /// Limit for one request, including reading the body; default 10s.
    #[serde(default)]
    timeout: Option<String>,
    /// CEL expression over `response` (the parsed JSON body) returning the list of items, e.g.
    /// `response.data.filter(i, i.active)`. Default: the whole response is one item.
    #[serde(default)]
    items: Option<String>,
    /// CEL expression over `item` giving its stable identity, e.g. `item.id`; an item whose key
    /// changes content fires `update`. Default: with `items`, the item's whole content (a
    /// changed item is then a new item, plus a delete of the old one); without `items`, the
    /// single response.
    #[serde(default)]
    key: Option<String>,
    /// Whether the first poll fires `create` for every item; default false (it only records
    /// them).
    #[serde(default)]
    fire_on_start: bool,
    /// Which of create, update, delete fire; default [create, update]. `object` is the item
    /// (the last seen item for delete); updates also set `oldObject`.
    #[serde(default)]
    events: Option<Vec<String>>,
    /// Memory one response may take: the bytes read, and again its parsed JSON, each counted as
    /// it comes (a parsed document takes several times its text). Over it the poll is a source
    /// error. Default 4194304 (4 MiB), at most 16777216.
    #[serde(default)]
    max_response_bytes: Option<usize>,
    /// Most items one response may hold (and the poller keeps); more is a source error. Default
    /// 1000, at most 10000.
    #[serde(default)]
    max_items: Option<usize>,
}

/// The schema of `headers`: each value a string, or a secret reference with an optional prefix
/// (read by [`headers`], which gives the precise errors).
fn header_values(generator: &mut SchemaGenerator) -> Schema {
    let secret = generator.subschema_for::<SecretKeyRef>();
    json_schema!({
        "type": "object",
        "additionalProperties": {"anyOf": [
            {"type": "string"},
            {
                "type": "object",
                "properties": {
                    "env": {"type": "string"},
                    "file": {"type": "string"},
                    "secretKeyRef": secret,
                    "prefix": {"type": "string"},
                },
                "additionalProperties": false,
            },
        ]},
    })
}

/// Builds `http-poller` sources.
#[derive(Debug, Clone, Default)]
pub struct HttpPollerFactory {
    egress: Arc<EgressPolicy>,
}

impl HttpPollerFactory {
    /// A factory whose pollers connect only where `egress` allows.
    pub fn with_egress(egress: Arc<EgressPolicy>) -> Self {
        HttpPollerFactory { egress }
    }
}

impl SourceType for HttpPollerFactory {
    type Properties = HttpPollerProperties;
    const NAME: &'static str = "http-poller";
    const EXAMPLE: &'static str = "source:
  type: http-poller
  properties:
    url: https://api.github.com/repos/kubevela/kube-trigger/releases
    interval: 5m
    headers:
      Authorization: {env: GITHUB_TOKEN, prefix: \"Bearer \"}
    items: response
    key: string(item.id)
    events: [create]
";

    fn build(
        &self,
        properties: HttpPollerProperties,
        context: &BuildContext,
    ) -> Result<Arc<dyn Source>, PropertyError> {
        Ok(Arc::new(HttpPoller::new(properties, context, self.egress.clone())?))
    }
}

impl HttpPoller {
    /// Checks the properties, reads the secrets and builds the HTTP client.
    fn new(
        props: HttpPollerProperties,
        context: &BuildContext,
        egress: Arc<EgressPolicy>,
    ) -> Result<HttpPoller, PropertyError> {
        let url = Url::parse(&props.url).map_err(|e| PropertyError::new("url", format!("invalid URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(PropertyError::new(
                "url",
                format!("scheme {:?} is not supported; use http or https", url.scheme()),
            ));
        }
        let method = match &props.method {
            None => Method::GET,
            Some(text) => Method::from_bytes(text.trim().to_ascii_uppercase().as_bytes())
                .map_err(|_| PropertyError::new("method", format!("invalid HTTP method {text:?}")))?,
        };
        let interval = duration(props.interval.as_deref(), DEFAULT_INTERVAL, "interval")?;
        let timeout = duration(props.timeout.as_deref(), DEFAULT_TIMEOUT, "timeout")?;
        let items = compile(props.items.as_deref(), "response", "items")?;
        let key = compile(props.key.as_deref(), "item", "key")?;
        let kinds = event_kinds(props.events.as_deref())?;
        let max_bytes =
            limit(props.max_response_bytes, DEFAULT_RESPONSE_BYTES, MAX_RESPONSE_BYTES, "maxResponseBytes")?;
        let max_items = limit(props.max_items, DEFAULT_ITEMS, MAX_ITEMS, "maxItems")?;
        // Secrets are read last, so that every other mistake is reported without needing them.
        let headers = headers(&props.headers, props.body.is_some(), &context.secrets)?;
        ktrigger_core::tls::ensure_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(EgressResolver(egress.clone()))
            .connector_layer(EgressLayer(egress))
            .build()
            .map_err(|e| PropertyError::whole(format!("cannot build the HTTP client: {e}")))?;
        let target = format!("{}{}", url.origin().ascii_serialization(), url.path());
        Ok(HttpPoller {
            trigger: context.trigger.clone(),
            client,
            method,
            url,
            target,
            headers,
            body: props.body,
            interval,
            items,
            key,
            fire_on_start: props.fire_on_start,
            kinds,
            max_bytes,
            max_items,
            seen: Mutex::new(None),
            state: context.state.clone(),
            restored: AtomicBool::new(false),
        })
    }
}

fn limit(value: Option<usize>, default: usize, most: usize, property: &str) -> Result<usize, PropertyError> {
    match value {
        None => Ok(default),
        Some(value) if (1..=most).contains(&value) => Ok(value),
        Some(_) => Err(PropertyError::new(property, format!("must be between 1 and {most}"))),
    }
}

fn duration(text: Option<&str>, default: Duration, property: &str) -> Result<Duration, PropertyError> {
    text.map_or(Ok(default), |text| ktrigger_api::parse_duration(text).map_err(|e| PropertyError::new(property, e)))
}

fn compile(source: Option<&str>, variable: &str, property: &str) -> Result<Option<CelExpr>, PropertyError> {
    source.map(|source| CelExpr::compile(source, &[variable]).map_err(|e| PropertyError::new(property, e))).transpose()
}

fn event_kinds(events: Option<&[String]>) -> Result<HashSet<Kind>, PropertyError> {
    let Some(events) = events else {
        return Ok(HashSet::from([Kind::Create, Kind::Update]));
    };
    if events.is_empty() {
        return Err(PropertyError::new("events", "name at least one of create, update, delete"));
    }
    events
        .iter()
        .map(|name| match name.as_str() {
            "create" => Ok(Kind::Create),
            "update" => Ok(Kind::Update),
            "delete" => Ok(Kind::Delete),
            other => {
                Err(PropertyError::new("events", format!("unknown event {other:?}; use create, update or delete")))
            }
        })
        .collect()
}

/// The request headers: literals and resolved secrets (marked sensitive), plus JSON defaults.
fn headers(
    configured: &BTreeMap<String, Value>,
    has_body: bool,
    secrets: &ClusterSecrets,
) -> Result<HeaderMap, PropertyError> {
    let mut map = HeaderMap::new();
    map.insert(ACCEPT, HeaderValue::from_static("application/json"));
    if has_body {
        map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    for (name, spec) in configured {
        let property = format!("headers.{name}");
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| PropertyError::new(&property, "not a valid header name"))?;
        let (text, sensitive) = match spec {
            Value::String(text) => (text.clone(), false),
            Value::Object(fields) => {
                let mut fields = fields.clone();
                let prefix = match fields.remove("prefix") {
                    None => String::new(),
                    Some(Value::String(prefix)) => prefix,
                    Some(_) => return Err(PropertyError::new(format!("{property}.prefix"), "must be a string")),
                };
                let reference: SecretRef =
                    serde_json::from_value(Value::Object(fields)).map_err(|e| PropertyError::new(&property, e))?;
                let secret = reference.resolve(secrets, &property)?;
                (format!("{prefix}{}", secret.expose()), true)
            }
            _ => {
                return Err(PropertyError::new(
                    &property,
                    "must be a string or a secret such as {env: NAME}, {file: PATH} or {secretKeyRef: {name, key}}",
                ));
            }
        };
        let mut value = HeaderValue::from_str(&text)
            .map_err(|_| PropertyError::new(&property, "the value is not a valid header value"))?;
        value.set_sensitive(sensitive);
        map.insert(header, value);
    }
    Ok(map)
}

/// What happened to one item between two polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Create,
    Update,
    Delete,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Create => "create",
            Kind::Update => "update",
            Kind::Delete => "delete",
        }
    }
}

/// One difference between the recorded items and a new response.
#[derive(Debug)]
struct Change {
    kind: Kind,
    key: String,
    item: Value,
    old: Option<Value>,
}

/// Whether polling goes on.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stopped,
    /// Over a limit or refused by the egress policy: polling again the same way cannot help soon.
    Failed(String),
}

/// Why a poll did not produce items.
enum PollError {
    /// Logged; the next poll may do better.
    Skipped(String),
    /// Reported as a source error.
    Failed(String),
}

/// A configured poller and the items it saw last.
struct HttpPoller {
    trigger: TriggerId,
    client: reqwest::Client,
    method: Method,
    url: Url,
    /// The URL without query or credentials, for logs.
    target: String,
    headers: HeaderMap,
    body: Option<String>,
    interval: Duration,
    items: Option<CelExpr>,
    key: Option<CelExpr>,
    fire_on_start: bool,
    kinds: HashSet<Kind>,
    /// Memory one response may take, as bytes read and as parsed JSON.
    max_bytes: usize,
    /// Most items of one response.
    max_items: usize,
    /// Items of the last successful poll by key; `None` before the first one.
    seen: Mutex<Option<BTreeMap<String, Value>>>,
    /// Where the recorded items are kept across restarts.
    state: SourceState,
    /// The stored items were read back.
    restored: AtomicBool,
}

/// One recorded item as stored.
#[derive(Serialize, Deserialize)]
struct StoredItem {
    key: String,
    item: Value,
}

#[async_trait]
impl Source for HttpPoller {
    async fn run(&self, sink: EventSink, cancel: CancellationToken) -> Result<(), SourceError> {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                _ = ticker.tick() => {}
            }
            // Cancelling drops the poll at an await point: during the request, or during a send
            // that has not completed; the recorded items then still match what was sent.
            let flow = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                flow = self.poll(&sink) => flow,
            };
            match flow {
                Flow::Continue => {}
                Flow::Stopped => return Ok(()),
                Flow::Failed(reason) => return Err(SourceError(reason)),
            }
        }
    }
}

impl HttpPoller {
    /// One poll: fetch, extract the items, fire for the differences.
    async fn poll(&self, sink: &EventSink) -> Flow {
        if self.state.durable()
            && let Err(reason) = self.restore().await
        {
            return Flow::Failed(reason);
        }
        let items = match self.fetch().await.and_then(|response| self.extract(&response)) {
            Ok(items) => items,
            Err(PollError::Skipped(reason)) => {
                tracing::warn!(trigger = %self.trigger, url = %self.target, "poll skipped: {reason}");
                return Flow::Continue;
            }
            Err(PollError::Failed(reason)) => return Flow::Failed(reason),
        };
        if self.state.durable() {
            return self.poll_durably(sink, items).await;
        }
        for change in self.changes(items) {
            if self.kinds.contains(&change.kind) && !sink.send(self.event(&change)).await {
                return Flow::Stopped;
            }
            self.apply(change);
        }
        Flow::Continue
    }

    /// Fires for the differences and records each once the trigger has handled its event; an
    /// event it could not store leaves its item as it was, so the next poll fires it again.
    async fn poll_durably(&self, sink: &EventSink, items: Vec<(String, Value)>) -> Flow {
        let first = ktrigger_core::sync::lock(&self.seen).is_none();
        let mut commits = Vec::new();
        if first {
            // Waited for, so that it cannot remove what is stored after it.
            if let Err(error) = self.state.clear().wait().await {
                return Flow::Failed(format!("cannot store the polled items: {error}"));
            }
            commits.push(self.state.put(POLLED_KEY, Vec::new()));
            if !self.fire_on_start {
                commits.extend(items.iter().map(|(key, item)| self.store_item(key, item)));
            }
        }
        let mut handed = Vec::new();
        for change in self.changes(items) {
            if !self.kinds.contains(&change.kind) {
                commits.push(self.record(&change));
                self.apply(change);
                continue;
            }
            match sink.send_tracked(Arc::new(self.event(&change))).await {
                Some(tracked) => handed.push((tracked, change)),
                None => return Flow::Stopped,
            }
        }
        let mut outcome = Flow::Continue;
        for (tracked, change) in handed {
            match tracked.handled().await {
                Handled::NotStored(reason) => {
                    outcome = Flow::Failed(format!("an event was not stored ({reason}); polling again"));
                    break;
                }
                _ => {
                    commits.push(self.record(&change));
                    self.apply(change);
                }
            }
        }
        match Commit::wait_all(commits).await {
            Ok(()) => outcome,
            Err(error) => Flow::Failed(format!("cannot store the polled items: {error}")),
        }
    }

    /// Reads the items recorded by an earlier run of the trigger, once.
    async fn restore(&self) -> Result<(), String> {
        if self.restored.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        let stored = self.state.load().await.map_err(|e| {
            self.restored.store(false, Ordering::Relaxed);
            format!("cannot read the recorded items: {e}")
        })?;
        if !stored.iter().any(|(key, _)| key == POLLED_KEY) {
            return Ok(());
        }
        let items: BTreeMap<String, Value> = stored
            .iter()
            .filter(|(key, _)| key.starts_with(ITEM_PREFIX))
            .filter_map(|(_, value)| serde_json::from_slice::<StoredItem>(value).ok())
            .map(|stored| (stored.key, stored.item))
            .take(MAX_ITEMS)
            .collect();
        *ktrigger_core::sync::lock(&self.seen) = Some(items);
        Ok(())
    }

    /// The event of `change`, its id made of the item key, a hash of its content and the kind.
    fn event(&self, change: &Change) -> Event {
        let content = hex::encode(Sha256::digest(change.item.to_string()));
        let id = stable_id(&[&change.key, &content, change.kind.name()]);
        let mut event = Event::new("http-poller", change.kind.name(), change.item.clone()).with_id(id);
        event.old_object = change.old.clone();
        event
    }

    /// Stores what `change` leaves recorded.
    fn record(&self, change: &Change) -> Commit {
        match change.kind {
            Kind::Create | Kind::Update => self.store_item(&change.key, &change.item),
            Kind::Delete => self.state.delete(&item_key(&change.key)),
        }
    }

    fn store_item(&self, key: &str, item: &Value) -> Commit {
        let stored = StoredItem { key: key.to_string(), item: item.clone() };
        self.state.put(&item_key(key), serde_json::to_vec(&stored).unwrap_or_default())
    }

    async fn fetch(&self) -> Result<Value, PollError> {
        let mut request = self.client.request(self.method.clone(), self.url.clone()).headers(self.headers.clone());
        if let Some(body) = &self.body {
            request = request.body(body.clone());
        }
        let mut response = request.send().await.map_err(request_error)?;
        let status = response.status();
        if status.is_redirection() {
            return Err(PollError::Skipped(format!("HTTP status {status} (redirects are not followed)")));
        }
        if !status.is_success() {
            return Err(PollError::Skipped(format!("HTTP status {status}")));
        }
        let too_large = || {
            PollError::Failed(format!(
                "the response is larger than maxResponseBytes ({} bytes); raise properties.maxResponseBytes \
                 (at most {MAX_RESPONSE_BYTES}) or ask for less",
                self.max_bytes
            ))
        };
        if response.content_length().is_some_and(|length| length > self.max_bytes as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(request_error)? {
            if body.len().saturating_add(chunk.len()) > self.max_bytes {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        match json_budget::parse(&body, self.max_bytes) {
            Ok(value) => Ok(value),
            Err(json_budget::ParseError::OverBudget) => Err(PollError::Failed(format!(
                "the parsed response takes more than maxResponseBytes ({} bytes) in memory; raise \
                 properties.maxResponseBytes (at most {MAX_RESPONSE_BYTES}) or ask for less",
                self.max_bytes
            ))),
            Err(json_budget::ParseError::Invalid(e)) => Err(PollError::Skipped(format!("response is not JSON: {e}"))),
        }
    }

    /// The items of a response with their keys, in response order, first of each key only.
    fn extract(&self, response: &Value) -> Result<Vec<(String, Value)>, PollError> {
        let list = match &self.items {
            None => vec![response.clone()],
            Some(expr) => match expr.eval_json(&Vars::from_json(&[("response", response)])) {
                Ok(Value::Array(list)) => list,
                Ok(other) => {
                    return Err(PollError::Skipped(format!("items must return a list, got {}", kind_of(&other))));
                }
                Err(e) => return Err(PollError::Skipped(format!("items: {e}"))),
            },
        };
        if list.len() > self.max_items {
            return Err(PollError::Failed(format!(
                "the response has {} items, more than maxItems ({}); raise properties.maxItems (at most \
                 {MAX_ITEMS}) or select fewer with properties.items",
                list.len(),
                self.max_items
            )));
        }
        let mut keys = HashSet::new();
        let mut items = Vec::with_capacity(list.len());
        for (index, item) in list.into_iter().enumerate() {
            let key = match (&self.key, &self.items) {
                (Some(expr), _) => match expr.eval_string(&Vars::from_json(&[("item", &item)])) {
                    Ok(key) => key,
                    Err(e) => {
                        tracing::warn!(trigger = %self.trigger, url = %self.target, "item {index} ignored: key: {e}");
                        continue;
                    }
                },
                (None, Some(_)) => item.to_string(),
                (None, None) => String::new(),
            };
            if keys.insert(key.clone()) {
                items.push((key, item));
            } else {
                tracing::debug!(trigger = %self.trigger, url = %self.target, key, "item {index} ignored: duplicate key");
            }
        }
        Ok(items)
    }

    /// The differences between the recorded items and `items`. On the first poll without
    /// `fireOnStart` the items are recorded at once and there are none.
    fn changes(&self, items: Vec<(String, Value)>) -> Vec<Change> {
        let mut seen = ktrigger_core::sync::lock(&self.seen);
        let previous = match &mut *seen {
            Some(previous) => previous,
            None if !self.fire_on_start => {
                *seen = Some(items.into_iter().collect());
                return Vec::new();
            }
            None => seen.insert(BTreeMap::new()),
        };
        let mut changes = Vec::new();
        let mut present = HashSet::with_capacity(items.len());
        for (key, item) in items {
            present.insert(key.clone());
            match previous.get(&key) {
                None => changes.push(Change { kind: Kind::Create, key, item, old: None }),
                Some(old) if *old != item => {
                    changes.push(Change { kind: Kind::Update, key, item, old: Some(old.clone()) })
                }
                Some(_) => {}
            }
        }
        for (key, old) in previous.iter() {
            if !present.contains(key) {
                changes.push(Change { kind: Kind::Delete, key: key.clone(), item: old.clone(), old: None });
            }
        }
        changes
    }

    /// Records one change once it was handed over (or needs no event).
    fn apply(&self, change: Change) {
        let mut seen = ktrigger_core::sync::lock(&self.seen);
        let recorded = seen.get_or_insert_with(BTreeMap::new);
        match change.kind {
            Kind::Create | Kind::Update => {
                recorded.insert(change.key, change.item);
            }
            Kind::Delete => {
                recorded.remove(&change.key);
            }
        }
    }
}

/// The store key of an item: item keys may be long (a whole item without `key`), hashes are not.
fn item_key(key: &str) -> String {
    format!("{ITEM_PREFIX}{}", hex::encode(Sha256::digest(key)))
}

/// Why a request got no response: a refusal of the egress policy is a source error, anything else
/// skips the poll. Never names the URL.
fn request_error(error: reqwest::Error) -> PollError {
    match find_refusal(&error) {
        Some(refused) => PollError::Failed(format!("connection refused: {refused}")),
        None => PollError::Skipped(error.without_url().to_string()),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::extract::State;
    use axum::http::{HeaderMap as AxumHeaders, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::any;
    use ktrigger_core::{SharedEvent, SourceFactory, TypedSource, parse_properties};
    use serde_json::json;

    use super::*;
    use crate::test_store::MapStore;

    /// What the test server answers, and the requests it saw.
    #[derive(Clone, Default)]
    struct Served {
        reply: Arc<Mutex<(u16, String)>>,
        requests: Arc<Mutex<Vec<(String, AxumHeaders, String)>>>,
    }

    impl Served {
        fn set(&self, status: u16, body: impl Into<String>) {
            *self.reply.lock().unwrap() = (status, body.into());
        }

        fn json(&self, value: Value) {
            self.set(200, value.to_string());
        }
    }

    async fn serve(served: Served) -> SocketAddr {
        async fn reply(
            State(served): State<Served>,
            method: axum::http::Method,
            headers: AxumHeaders,
            body: String,
        ) -> Response {
            served.requests.lock().unwrap().push((method.to_string(), headers, body));
            let (status, body) = served.reply.lock().unwrap().clone();
            (StatusCode::from_u16(status).unwrap(), body).into_response()
        }
        let app = Router::new().route("/items", any(reply)).with_state(served);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    fn context() -> BuildContext {
        BuildContext::new(TriggerId { namespace: "ns".into(), service: "s".into(), trigger: "t".into() })
    }

    fn poller(properties: Value) -> Result<HttpPoller, PropertyError> {
        ktrigger_core::tls::ensure_crypto_provider();
        HttpPoller::new(parse_properties(&properties)?, &context(), Arc::default())
    }

    /// Polls once and returns every event fired.
    async fn poll(poller: &HttpPoller) -> Vec<SharedEvent> {
        let (sink, mut events) = EventSink::channel(64);
        assert_eq!(poller.poll(&sink).await, Flow::Continue);
        drop(sink);
        let mut fired = Vec::new();
        while let Some(envelope) = events.recv().await {
            fired.push(envelope.event);
        }
        fired
    }

    #[tokio::test]
    async fn whole_response_fires_update_with_old_object_only_when_it_changes() {
        let served = Served::default();
        served.json(json!({"version": "1.0"}));
        let addr = serve(served.clone()).await;
        let poller = poller(json!({"url": format!("http://{addr}/items")})).unwrap();

        assert!(poll(&poller).await.is_empty(), "the first poll only records");
        assert!(poll(&poller).await.is_empty(), "an unchanged response fires nothing");
        served.json(json!({"version": "1.1"}));
        let fired = poll(&poller).await;
        assert_eq!(fired.len(), 1);
        assert_eq!((fired[0].meta.source.as_str(), fired[0].meta.event_type.as_str()), ("http-poller", "update"));
        assert_eq!(fired[0].object, json!({"version": "1.1"}));
        assert_eq!(fired[0].old_object, Some(json!({"version": "1.0"})));
        assert!(poll(&poller).await.is_empty());
    }

    /// A poller of `properties` whose recorded items are kept in `store`.
    fn durable_poller(properties: Value, store: &Arc<MapStore>) -> HttpPoller {
        ktrigger_core::tls::ensure_crypto_provider();
        let context = BuildContext { state: MapStore::source_state(store), ..context() };
        HttpPoller::new(parse_properties(&properties).unwrap(), &context, Arc::default()).unwrap()
    }

    /// Polls once, answering every event with `handled` as it comes; how the poll ended and
    /// every event fired.
    async fn poll_answering(poller: &HttpPoller, handled: Handled) -> (Flow, Vec<SharedEvent>) {
        let (sink, mut events) = EventSink::channel(64);
        let answering = tokio::spawn(async move {
            let mut fired = Vec::new();
            while let Some(envelope) = events.recv().await {
                fired.push(envelope.event.clone());
                envelope.answer(handled.clone());
            }
            fired
        });
        let flow = poller.poll(&sink).await;
        drop(sink);
        (flow, answering.await.unwrap())
    }

    #[tokio::test]
    async fn a_restarted_poller_fires_only_what_changed_while_it_was_stopped() {
        let store = Arc::new(MapStore::default());
        let served = Served::default();
        served.json(json!({"data": [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}]}));
        let addr = serve(served.clone()).await;
        let properties = json!({"url": format!("http://{addr}/items"), "items": "response.data",
            "key": "string(item.id)", "events": ["create", "update", "delete"]});
        let first = durable_poller(properties.clone(), &store);
        assert_eq!(poll_answering(&first, Handled::Fired).await, (Flow::Continue, vec![]), "the first poll records");
        drop(first);

        let restarted = durable_poller(properties.clone(), &store);
        assert_eq!(poll_answering(&restarted, Handled::Fired).await, (Flow::Continue, vec![]), "nothing changed");
        drop(restarted);

        served.json(json!({"data": [{"id": 2, "v": "B"}]}));
        let restarted = durable_poller(properties, &store);
        let (flow, fired) = poll_answering(&restarted, Handled::Fired).await;
        assert_eq!(flow, Flow::Continue);
        let summary: Vec<(&str, &Value)> =
            fired.iter().map(|e| (e.meta.event_type.as_str(), &e.object["id"])).collect();
        assert_eq!(summary, [("update", &json!(2)), ("delete", &json!(1))]);
        assert_eq!(fired[0].old_object, Some(json!({"id": 2, "v": "b"})));
        let content = hex::encode(Sha256::digest(json!({"id": 2, "v": "B"}).to_string()));
        assert_eq!(fired[0].meta.id, stable_id(&["2", &content, "update"]));
        let items = store.keys().into_iter().filter(|k| k.contains("/source/item/")).count();
        assert_eq!(items, 1, "the deleted item is no longer stored");
    }

    #[tokio::test]
    async fn an_item_the_trigger_could_not_store_fires_again_with_the_same_id() {
        let store = Arc::new(MapStore::default());
        let served = Served::default();
        served.json(json!({"version": "1.0"}));
        let addr = serve(served.clone()).await;
        let properties = json!({"url": format!("http://{addr}/items")});
        let poller = durable_poller(properties.clone(), &store);
        assert_eq!(poll_answering(&poller, Handled::Fired).await, (Flow::Continue, vec![]));

        served.json(json!({"version": "1.1"}));
        let (flow, refused) = poll_answering(&poller, Handled::NotStored("queue full".into())).await;
        assert_eq!(flow, Flow::Failed("an event was not stored (queue full); polling again".into()));
        let (flow, again) = poll_answering(&poller, Handled::Fired).await;
        assert_eq!(flow, Flow::Continue);
        assert_eq!((again.len(), &again[0].meta.id), (1, &refused[0].meta.id));

        let restarted = durable_poller(properties, &store);
        assert_eq!(poll_answering(&restarted, Handled::Fired).await, (Flow::Continue, vec![]));
    }

    #[tokio::test]
    async fn items_with_keys_fire_create_update_and_delete() {
        let served = Served::default();
        served.json(json!({"data": [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}]}));
        let addr = serve(served.clone()).await;
        let poller = poller(json!({
            "url": format!("http://{addr}/items"), "items": "response.data", "key": "item.id",
            "events": ["create", "update", "delete"],
        }))
        .unwrap();
        assert!(poll(&poller).await.is_empty());

        served.json(json!({"data": [{"id": 2, "v": "B"}, {"id": 3, "v": "c"}]}));
        let fired = poll(&poller).await;
        let summary: Vec<(&str, &Value)> =
            fired.iter().map(|e| (e.meta.event_type.as_str(), &e.object["id"])).collect();
        assert_eq!(summary, [("update", &json!(2)), ("create", &json!(3)), ("delete", &json!(1))]);
        assert_eq!(fired[0].old_object, Some(json!({"id": 2, "v": "b"})));
        assert_eq!(fired[2].object, json!({"id": 1, "v": "a"}), "a delete carries the last seen item");
        assert!(poll(&poller).await.is_empty());
    }

    #[tokio::test]
    async fn deletes_fire_only_when_asked_and_items_without_key_are_identified_by_content() {
        let served = Served::default();
        served.json(json!([{"n": 1}, {"n": 2}]));
        let addr = serve(served.clone()).await;
        let poller =
            poller(json!({"url": format!("http://{addr}/items"), "items": "response", "fireOnStart": true})).unwrap();
        let fired = poll(&poller).await;
        assert_eq!(fired.iter().map(|e| e.meta.event_type.as_str()).collect::<Vec<_>>(), ["create", "create"]);

        served.json(json!([{"n": 2}, {"n": 3}]));
        let fired = poll(&poller).await;
        assert_eq!(fired.len(), 1, "no delete event by default");
        assert_eq!((fired[0].meta.event_type.as_str(), &fired[0].object), ("create", &json!({"n": 3})));
    }

    #[tokio::test]
    async fn failed_polls_are_skipped_and_keep_the_recorded_items() {
        let served = Served::default();
        served.json(json!({"v": 1}));
        let addr = serve(served.clone()).await;
        let source = poller(json!({"url": format!("http://{addr}/items"), "items": "response.list"})).unwrap();
        // `response.list` is missing: the items expression fails and the poll is skipped.
        assert!(poll(&source).await.is_empty());
        assert!(source.seen.lock().unwrap().is_none());

        served.json(json!({"list": [{"v": 1}]}));
        assert!(poll(&source).await.is_empty());
        served.set(500, r#"{"list": []}"#);
        assert!(poll(&source).await.is_empty());
        served.set(200, "<html>");
        assert!(poll(&source).await.is_empty());
        served.json(json!({"list": 5}));
        assert!(poll(&source).await.is_empty());
        served.json(json!({"list": [{"v": 1}, {"v": 2}]}));
        let fired = poll(&source).await;
        assert_eq!(fired.len(), 1, "the failed polls did not change what was recorded");
        assert_eq!(fired[0].object, json!({"v": 2}));

        let unreachable = poller(json!({"url": "http://127.0.0.1:1/", "timeout": "1s"})).unwrap();
        assert!(poll(&unreachable).await.is_empty());
    }

    #[tokio::test]
    async fn method_body_and_secret_headers_are_sent() {
        let served = Served::default();
        served.json(json!({}));
        let addr = serve(served.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "abc\n").unwrap();
        let poller = poller(json!({
            "url": format!("http://{addr}/items"), "method": "post", "body": "{\"q\": 1}",
            "headers": {"Authorization": {"file": token.display().to_string(), "prefix": "Bearer "}, "X-Plain": "p"},
        }))
        .unwrap();
        poll(&poller).await;
        let requests = served.requests.lock().unwrap();
        let (method, headers, body) = &requests[0];
        assert_eq!(method, "POST");
        assert_eq!(body, "{\"q\": 1}");
        assert_eq!(headers["authorization"], "Bearer abc");
        assert_eq!(headers["x-plain"], "p");
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers["accept"], "application/json");
    }

    /// Serves every connection one response of `total` bytes of `[0,0,…` (not closed, so not
    /// JSON), written in 64 KiB pieces as the client reads, with a Content-Length when asked.
    /// Counts the bytes written.
    async fn serve_large(total: usize, content_length: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let written = Arc::new(AtomicUsize::new(0));
        let counter = written.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut request = vec![0; 4096];
                    let _ = socket.read(&mut request).await;
                    let length = if content_length { format!("Content-Length: {total}\r\n") } else { String::new() };
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{length}Connection: close\r\n\r\n"
                    );
                    if socket.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let piece = format!("[{}", "0,".repeat(32 * 1024 - 1));
                    while counter.load(Ordering::SeqCst) < total {
                        if socket.write_all(piece.as_bytes()).await.is_err() {
                            return;
                        }
                        counter.fetch_add(piece.len(), Ordering::SeqCst);
                    }
                });
            }
        });
        (addr, written)
    }

    async fn outcome(poller: &HttpPoller) -> Flow {
        let (sink, _events) = EventSink::channel(64);
        poller.poll(&sink).await
    }

    fn failure(flow: Flow) -> String {
        match flow {
            Flow::Failed(reason) => reason,
            other => panic!("expected a source error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_response_over_max_response_bytes_is_a_source_error_and_is_not_read_to_the_end() {
        let total = 64 * 1024 * 1024;
        let (addr, written) = serve_large(total, false).await;
        let poller = poller(json!({"url": format!("http://{addr}/"), "maxResponseBytes": 1048576})).unwrap();
        let reason = failure(outcome(&poller).await);
        assert!(reason.starts_with("the response is larger than maxResponseBytes (1048576 bytes)"), "{reason}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let sent = written.load(Ordering::SeqCst);
        assert!(sent < total / 2, "the poller stopped reading: the server wrote {sent} of {total} bytes");
    }

    #[tokio::test]
    async fn a_content_length_over_max_response_bytes_is_refused_before_reading() {
        let (addr, _) = serve_large(2 * 1024 * 1024, true).await;
        let poller = poller(json!({"url": format!("http://{addr}/"), "maxResponseBytes": 1048576})).unwrap();
        assert!(failure(outcome(&poller).await).contains("larger than maxResponseBytes"));
    }

    #[tokio::test]
    async fn the_parsed_size_of_a_response_counts_against_max_response_bytes() {
        let served = Served::default();
        let small = format!("[{}0]", "0,".repeat(100_000));
        served.set(200, small.clone());
        let addr = serve(served.clone()).await;
        let url = format!("http://{addr}/items");
        let tight = poller(json!({"url": url, "items": "response", "maxResponseBytes": 10 * small.len()})).unwrap();
        let reason = failure(outcome(&tight).await);
        assert!(reason.starts_with("the parsed response takes more than maxResponseBytes"), "{reason}");
        let roomy =
            poller(json!({"url": url, "items": "response", "maxResponseBytes": 20 * small.len(), "maxItems": 10000}))
                .unwrap();
        assert!(failure(outcome(&roomy).await).contains("more than maxItems (10000)"));
    }

    #[tokio::test]
    async fn more_items_than_max_items_is_a_source_error_and_keeps_nothing() {
        let served = Served::default();
        served.json(json!([1, 2, 3, 4]));
        let addr = serve(served.clone()).await;
        let poller =
            poller(json!({"url": format!("http://{addr}/items"), "items": "response", "maxItems": 3})).unwrap();
        let reason = failure(outcome(&poller).await);
        assert!(reason.starts_with("the response has 4 items, more than maxItems (3)"), "{reason}");
        assert!(poller.seen.lock().unwrap().is_none());
        served.json(json!([1, 2, 3]));
        assert_eq!(outcome(&poller).await, Flow::Continue);
    }

    #[tokio::test]
    async fn redirects_are_not_followed_so_headers_stay_with_the_origin() {
        let elsewhere = Served::default();
        elsewhere.json(json!({}));
        let other = serve(elsewhere.clone()).await;
        let redirect = Router::new().route(
            "/items",
            any(move || async move {
                (StatusCode::FOUND, [("location", format!("http://{other}/items"))], "").into_response()
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, redirect).await });
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key"), "s3cret").unwrap();
        let key = dir.path().join("key").display().to_string();
        let poller =
            poller(json!({"url": format!("http://{addr}/items"), "headers": {"X-Api-Key": {"file": key}}})).unwrap();
        assert_eq!(outcome(&poller).await, Flow::Continue, "a redirect skips the poll");
        assert!(elsewhere.requests.lock().unwrap().is_empty(), "nothing reached the other origin");
    }

    #[tokio::test]
    async fn a_refused_address_is_a_source_error_naming_the_rule() {
        let served = Served::default();
        served.json(json!({}));
        let addr = serve(served.clone()).await;
        let properties = json!({"url": format!("http://localhost:{}/items", addr.port())});
        let refusing =
            HttpPoller::new(parse_properties(&properties).unwrap(), &context(), Arc::new(EgressPolicy::shared(&[])))
                .unwrap();
        let reason = failure(outcome(&refusing).await);
        assert!(reason.starts_with("connection refused: "), "{reason}");
        assert!(reason.ends_with("is refused by the egress policy (loopback)"), "{reason}");
        assert!(served.requests.lock().unwrap().is_empty());
    }

    // Real time: with tokio's paused clock, a request waiting on the socket could see its timeout
    // fire early, because paused time jumps ahead whenever the runtime is idle.
    #[tokio::test]
    async fn run_polls_on_the_interval_and_keeps_state_across_runs() {
        let served = Served::default();
        served.json(json!({"v": 1}));
        let addr = serve(served.clone()).await;
        let properties = json!({"url": format!("http://{addr}/items"), "interval": "50ms"});
        let source = poller(properties).map(Arc::new).unwrap();
        let (sink, mut events) = EventSink::channel(4);

        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let (source, cancel, sink) = (source.clone(), cancel.clone(), sink.clone());
            async move { source.run(sink, cancel).await }
        });
        wait_for_requests(&served, 2).await;
        served.json(json!({"v": 2}));
        let event = next_event(&mut events).await;
        assert_eq!((event.meta.event_type.as_str(), &event.object), ("update", &json!({"v": 2})));
        cancel.cancel();
        task.await.unwrap().unwrap();

        // A new run of the same source compares against what the previous run saw.
        served.json(json!({"v": 3}));
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let (source, cancel) = (source.clone(), cancel.clone());
            async move { source.run(sink, cancel).await }
        });
        let event = next_event(&mut events).await;
        assert_eq!(event.old_object, Some(json!({"v": 2})));
        cancel.cancel();
        task.await.unwrap().unwrap();
        assert!(events.try_recv().is_err(), "one change, one event");
    }

    async fn next_event(events: &mut tokio::sync::mpsc::Receiver<ktrigger_core::Envelope>) -> SharedEvent {
        tokio::time::timeout(Duration::from_secs(10), events.recv()).await.expect("no event within 10s").unwrap().event
    }

    async fn wait_for_requests(served: &Served, count: usize) {
        for _ in 0..1000 {
            if served.requests.lock().unwrap().len() >= count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the poller made fewer than {count} requests");
    }

    #[test]
    fn load_errors_name_the_property_and_hide_secrets() {
        ktrigger_core::tls::ensure_crypto_provider();
        let factory = TypedSource::new(HttpPollerFactory::default());
        let err = |properties: Value| factory.build(&properties, &context()).err().unwrap().to_string();
        assert!(err(json!({})).contains("missing field `url`"));
        assert!(err(json!({"url": "not a url"})).starts_with("properties.url: invalid URL"));
        assert!(err(json!({"url": "ftp://x/"})).starts_with("properties.url: scheme"));
        let url = "http://x/";
        assert!(err(json!({"url": url, "method": "GE T"})).starts_with("properties.method:"));
        assert!(err(json!({"url": url, "interval": "soon"})).starts_with("properties.interval: invalid duration"));
        assert!(err(json!({"url": url, "timeout": "0s"})).starts_with("properties.timeout:"));
        let e = err(json!({"url": url, "items": "response.data.filter(i,"}));
        assert!(e.starts_with("properties.items: line 1, column"), "{e}");
        let e = err(json!({"url": url, "key": "object.id"}));
        assert!(e.starts_with("properties.key:") && e.contains("object"), "{e}");
        assert!(
            err(json!({"url": url, "events": ["create", "patch"]})).starts_with("properties.events: unknown event")
        );
        assert!(err(json!({"url": url, "events": []})).starts_with("properties.events:"));
        assert!(err(json!({"url": url, "headers": {"bad name": "x"}})).starts_with("properties.headers.bad name:"));
        let e = err(json!({"url": url, "headers": {"X-Token": "line\nbreak-secret"}}));
        assert_eq!(e, "properties.headers.X-Token: the value is not a valid header value");
        let e = err(json!({"url": url, "headers": {"X-Token": {"env": "KTRIGGER_TEST_UNSET_TOKEN"}}}));
        assert_eq!(e, "properties.headers.X-Token: environment variable KTRIGGER_TEST_UNSET_TOKEN is not set");
        let e = err(json!({"url": url, "headers": {"X-Token": {"vault": "x"}}}));
        assert!(e.starts_with("properties.headers.X-Token:") && e.contains("vault"), "{e}");
        assert!(err(json!({"url": url, "headers": {"X-Count": 5}})).starts_with("properties.headers.X-Count: must be"));
        assert!(err(json!({"url": url, "intervall": "5s"})).contains("intervall"));
        for (property, value) in [("maxResponseBytes", 0), ("maxResponseBytes", 16 * 1024 * 1024 + 1), ("maxItems", 0)]
        {
            let e = err(json!({"url": url, property: value}));
            assert!(e.starts_with(&format!("properties.{property}: must be between 1 and")), "{e}");
        }
    }
}
