//! The one HTTP server every `webhook` source shares.
//!
//! The binary binds it once ([`WebhookListener::bind`]) and serves it ([`WebhookListener::serve`]).
//! A webhook source claims its path when it is loaded (so a conflict is a load error in the
//! trigger's status) and receives the path's requests while it runs.
//!
//! Paths: under [`PathScope::PerTriggerService`] (the controller) every path of a TriggerService
//! lives under `/{namespace}/{service}`, so no request can reach another TriggerService. Under
//! [`PathScope::Global`] (`ktrigger run`) paths are used as written. Either way a path has one
//! `auth`: triggers may share it only with equal auth, and a request reaches only the triggers
//! whose auth accepted it.
//!
//! Answers: 202 `{"accepted": true, "id": ..., "fired": ..., "triggers": [...]}` once every
//! trigger that took the event stored it or decided not to fire it, with each trigger's outcome
//! (`fired`, `debouncing`, `filteredOut`, `filterError`, `duplicate`, `rateLimited`: the kind
//! only, never a reason that could quote the filter or another sender's event); 503 with
//! Retry-After when a trigger could not store it (state store unavailable, queue full), so the
//! sender retries;
//! 200 `{"duplicate": true}` for a delivery id already accepted within the replay window; 404 for
//! a path no running trigger uses; 405 for a method other than POST; 401 when the credentials are
//! not accepted; 408 when the body is not received within the body timeout; 413 for a body over
//! the size limit; 400 for a body that is not JSON or an invalid CloudEvent; 503 when every trigger
//! on the path has stopped or is busy, or the listener holds too many request bodies at once.
//!
//! Event ids: the sender's delivery id (the header the trigger's auth names, else
//! `Idempotency-Key`) makes a deterministic id, so a retried request is the same event; without
//! one, the id assigned at acceptance is stored with the deliveries.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use http_body_util::BodyExt;
use ktrigger_core::{Event, EventSink, Handled, SharedEvent, TriggerId, stable_id};
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::SourcesError;
use crate::auth::{Auth, DeliveryId, NOT_ACCEPTED};
use crate::replay::SeenIds;
use crate::server::{ServerCounters, ServerLimits};

/// Largest request body accepted by default (1 MiB); larger bodies get 413.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Request bodies held in memory at once, all connections together, by default (32 MiB).
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 32 * 1024 * 1024;
/// Time to receive a whole request body by default.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest header, idle or body timeout accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long a request waits for a busy trigger to take its event before the answer is 503.
const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(10);
/// What a 503 answer asks the sender to wait before retrying.
const RETRY_AFTER_SECONDS: &str = "1";
/// Header a sender may set so that its retries are recognised.
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Longest sender id taken from a header.
const MAX_SENDER_ID_BYTES: usize = 256;

/// Where webhook paths live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathScope {
    /// Paths are used as written and shared by every TriggerService (`ktrigger run`).
    #[default]
    Global,
    /// Each TriggerService's paths live under `/{namespace}/{service}` (`ktrigger controller`).
    PerTriggerService,
}

/// How the listener routes and what it bounds.
#[derive(Debug, Clone)]
pub struct ListenerOptions {
    /// Where paths live.
    pub scope: PathScope,
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Request body bytes held at once over all connections; beyond it requests get 503.
    pub max_buffered_bytes: usize,
    /// Time to receive a whole request body; slower ones get 408 and the connection is closed.
    pub body_timeout: Duration,
    /// Connection limits and timeouts.
    pub server: ServerLimits,
}

impl Default for ListenerOptions {
    fn default() -> Self {
        ListenerOptions {
            scope: PathScope::Global,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            server: ServerLimits::default(),
        }
    }
}

/// Requests and connections the listener refused or cut since start, and connections open now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerStats {
    /// Connections being served now.
    pub open_connections: usize,
    /// Connections closed because a request's headers did not arrive in time.
    pub header_timeouts: u64,
    /// Requests answered 408: the body did not arrive in time.
    pub body_timeouts: u64,
    /// Requests answered 413: the body was over the size limit.
    pub too_large: u64,
    /// Requests answered 503 because the listener held too many bodies at once.
    pub over_budget: u64,
    /// Requests answered 401.
    pub unauthorized: u64,
    /// Requests answered 200 as a delivery already accepted.
    pub duplicates: u64,
}

#[derive(Default)]
struct Counters {
    server: Arc<ServerCounters>,
    body_timeouts: AtomicU64,
    too_large: AtomicU64,
    over_budget: AtomicU64,
    unauthorized: AtomicU64,
    duplicates: AtomicU64,
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The shared inbound HTTP server of all `webhook` sources.
pub struct WebhookListener {
    local_addr: Option<SocketAddr>,
    options: ListenerOptions,
    counters: Counters,
    socket: Mutex<Option<TcpListener>>,
    routes: RwLock<HashMap<String, Vec<Route>>>,
    buffered: Arc<Semaphore>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for WebhookListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookListener").field("local_addr", &self.local_addr).finish_non_exhaustive()
    }
}

/// What `object` is for a CloudEvent: its `data` (default) or the whole event (attributes and data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum CloudEventObject {
    /// `object` is the event's `data`.
    #[default]
    Data,
    /// `object` is the whole event in structured form: its attributes plus `data`.
    Event,
}

/// How one trigger receives requests on a path.
pub(crate) struct RouteConfig {
    /// The trigger the route belongs to.
    pub trigger: TriggerId,
    /// Credentials a request must carry; `None` accepts every request.
    pub auth: Option<Arc<Auth>>,
    /// What `object` is for CloudEvents.
    pub cloud_event_object: CloudEventObject,
}

/// The triggers sharing one path with one `auth`, and the delivery ids they accepted.
struct Route {
    gate: Arc<Gate>,
    members: Vec<Member>,
}

/// What a request must pass to reach a route's triggers.
struct Gate {
    auth: Option<Arc<Auth>>,
    seen: Mutex<SeenIds>,
}

struct Member {
    claim: u64,
    trigger: TriggerId,
    cloud_event_object: CloudEventObject,
    sink: Option<EventSink>,
    /// The trigger has run: it was loaded by an earlier apply.
    started: bool,
}

/// A trigger receiving a route's requests, as the request handler sees it.
type Recipient = (TriggerId, CloudEventObject, EventSink);

/// A trigger's hold on its path from load until dropped; [`Claim::receive`] hands it requests.
pub(crate) struct Claim {
    listener: Arc<WebhookListener>,
    path: String,
    id: u64,
    trigger: TriggerId,
    has_auth: bool,
}

impl Claim {
    /// Hands the path's accepted requests to `sink` until the returned guard is dropped.
    pub(crate) fn receive(&self, sink: EventSink) -> Receiving<'_> {
        self.set_sink(Some(sink));
        Receiving(self)
    }

    /// The trigger holding the path.
    pub(crate) fn trigger(&self) -> &TriggerId {
        &self.trigger
    }

    /// The full path requests are sent to.
    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    /// Whether requests must carry credentials.
    pub(crate) fn has_auth(&self) -> bool {
        self.has_auth
    }

    fn set_sink(&self, sink: Option<EventSink>) {
        let mut routes = ktrigger_core::sync::write(&self.listener.routes);
        let members = routes.get_mut(&self.path).into_iter().flatten().flat_map(|route| &mut route.members);
        if let Some(member) = members.into_iter().find(|member| member.claim == self.id) {
            member.started |= sink.is_some();
            member.sink = sink;
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut routes = ktrigger_core::sync::write(&self.listener.routes);
        if let Some(list) = routes.get_mut(&self.path) {
            for route in list.iter_mut() {
                route.members.retain(|member| member.claim != self.id);
            }
            list.retain(|route| !route.members.is_empty());
            if list.is_empty() {
                routes.remove(&self.path);
            }
        }
    }
}

/// Receives requests for a [`Claim`] while it lives.
pub(crate) struct Receiving<'a>(&'a Claim);

impl Drop for Receiving<'_> {
    fn drop(&mut self) {
        self.0.set_sink(None);
    }
}

impl WebhookListener {
    /// Binds `addr` (port 0 picks a free port) with default options; serve it with [`Self::serve`].
    pub async fn bind(addr: SocketAddr) -> Result<Arc<Self>, SourcesError> {
        Self::bind_with(addr, ListenerOptions::default()).await
    }

    /// Binds `addr` with `options`.
    pub async fn bind_with(addr: SocketAddr, options: ListenerOptions) -> Result<Arc<Self>, SourcesError> {
        let timeouts = [
            ("header timeout", options.server.header_timeout),
            ("idle timeout", options.server.idle_timeout),
            ("body timeout", options.body_timeout),
        ];
        for (name, timeout) in timeouts {
            if timeout.is_zero() || timeout > MAX_TIMEOUT {
                return Err(SourcesError::Limits(format!(
                    "the {name} must be more than 0s and at most {}s",
                    MAX_TIMEOUT.as_secs()
                )));
            }
        }
        if options.server.max_connections == 0 {
            return Err(SourcesError::Limits("at least one connection must be allowed".into()));
        }
        if options.max_buffered_bytes < options.max_body_bytes {
            return Err(SourcesError::Limits(format!(
                "the bytes buffered for all requests ({}) must be at least the largest body ({})",
                options.max_buffered_bytes, options.max_body_bytes
            )));
        }
        let socket = TcpListener::bind(addr).await.map_err(|source| SourcesError::Bind { addr, source })?;
        let local_addr = socket.local_addr().map_err(|source| SourcesError::Bind { addr, source })?;
        Ok(Self::new(Some(local_addr), Some(socket), options))
    }

    /// A listener with no socket, for modes that load triggers but never receive requests
    /// (validation, listing types); webhook sources still claim and release their paths.
    pub fn detached() -> Arc<Self> {
        Self::new(None, None, ListenerOptions::default())
    }

    fn new(local_addr: Option<SocketAddr>, socket: Option<TcpListener>, options: ListenerOptions) -> Arc<Self> {
        let buffered = Arc::new(Semaphore::new(options.max_buffered_bytes.min(Semaphore::MAX_PERMITS)));
        Arc::new(WebhookListener {
            local_addr,
            options,
            socket: Mutex::new(socket),
            routes: RwLock::new(HashMap::new()),
            buffered,
            next_id: AtomicU64::new(1),
            counters: Counters::default(),
        })
    }

    /// The address actually bound (useful with port 0); `None` when detached.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// What the listener refused or cut since start, and the connections open now.
    pub fn stats(&self) -> ListenerStats {
        let c = &self.counters;
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ListenerStats {
            open_connections: c.server.open(),
            header_timeouts: c.server.header_timeouts(),
            body_timeouts: read(&c.body_timeouts),
            too_large: read(&c.too_large),
            over_budget: read(&c.over_budget),
            unauthorized: read(&c.unauthorized),
            duplicates: read(&c.duplicates),
        }
    }

    /// The paths running webhook triggers listen on, sorted.
    pub fn paths(&self) -> Vec<String> {
        let routes = ktrigger_core::sync::read(&self.routes);
        let mut paths: Vec<String> = routes
            .iter()
            .filter(|(_, list)| list.iter().flat_map(|route| &route.members).any(|member| member.sink.is_some()))
            .map(|(path, _)| path.clone())
            .collect();
        paths.sort();
        paths
    }

    /// How many triggers receive requests now.
    #[cfg(test)]
    pub(crate) fn receiving(&self) -> usize {
        let routes = ktrigger_core::sync::read(&self.routes);
        routes.values().flatten().flat_map(|route| &route.members).filter(|member| member.sink.is_some()).count()
    }

    /// Serves requests until `cancel` fires; then stops accepting, lets requests in flight finish
    /// and closes the connections still open when the shutdown grace ends. Only one call may
    /// serve a listener; a second one gets [`SourcesError::AlreadyServing`].
    pub async fn serve(self: Arc<Self>, cancel: CancellationToken) -> Result<(), SourcesError> {
        let Some(addr) = self.local_addr else {
            return Err(SourcesError::NotBound);
        };
        let socket = ktrigger_core::sync::lock(&self.socket).take().ok_or(SourcesError::AlreadyServing)?;
        let limits = self.options.server.clone();
        let counters = self.counters.server.clone();
        let app = Router::new().fallback(handle).with_state(self);
        tracing::info!(%addr, "webhook listener serving");
        crate::server::serve(socket, app, limits, counters, cancel).await;
        Ok(())
    }

    /// Runs [`Self::serve`] on a new task.
    pub fn spawn(self: &Arc<Self>, cancel: CancellationToken) -> JoinHandle<Result<(), SourcesError>> {
        tokio::spawn(self.clone().serve(cancel))
    }

    /// The full path of a trigger's webhook: `path` (already checked and normalised) or the
    /// default, placed where [`Self::scope`] says.
    pub(crate) fn route_path(&self, trigger: &TriggerId, path: Option<&str>) -> String {
        match self.options.scope {
            PathScope::Global => path.map(str::to_string).unwrap_or_else(|| {
                let mut default = String::from("/webhooks");
                for segment in [&trigger.namespace, &trigger.service, &trigger.trigger] {
                    if !segment.is_empty() {
                        default.push('/');
                        default.push_str(segment);
                    }
                }
                default
            }),
            PathScope::PerTriggerService => {
                let own = format!("/{}", trigger.trigger);
                let mut full = String::new();
                for segment in [&trigger.namespace, &trigger.service] {
                    if !segment.is_empty() {
                        full.push('/');
                        full.push_str(segment);
                    }
                }
                match path.unwrap_or(&own) {
                    "/" if !full.is_empty() => {}
                    rest => full.push_str(rest),
                }
                full
            }
        }
    }

    /// Claims `path` (already complete) for a trigger. Refused when another trigger holds the
    /// path with different `auth`, so the first in document order keeps it. Not counted: an older
    /// version of the same trigger, and triggers of the same TriggerService that have already
    /// run, because applying a TriggerService builds all its triggers again before it stops the
    /// old ones: those that stay hold a new claim by then, and those removed must not block.
    pub(crate) fn claim(self: &Arc<Self>, path: &str, config: RouteConfig) -> Result<Claim, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut routes = ktrigger_core::sync::write(&self.routes);
        let list = routes.get(path).map(Vec::as_slice).unwrap_or_default();
        let other_auth = list.iter().filter(|route| route.gate.auth.as_deref() != config.auth.as_deref());
        let same_service =
            |t: &TriggerId| t.namespace == config.trigger.namespace && t.service == config.trigger.service;
        let blocking = |m: &&Member| m.trigger != config.trigger && !(m.started && same_service(&m.trigger));
        if let Some(other) = other_auth.flat_map(|route| &route.members).find(blocking) {
            return Err(format!(
                "{path} is already used by trigger {} with different auth; triggers may share a path only \
                 with equal auth",
                other.trigger
            ));
        }
        let has_auth = config.auth.is_some();
        let member = Member {
            claim: id,
            trigger: config.trigger.clone(),
            cloud_event_object: config.cloud_event_object,
            sink: None,
            started: false,
        };
        let list = routes.entry(path.to_string()).or_default();
        match list.iter_mut().find(|route| route.gate.auth.as_deref() == config.auth.as_deref()) {
            Some(route) => route.members.push(member),
            None => {
                let gate = Arc::new(Gate { auth: config.auth, seen: Mutex::new(SeenIds::default()) });
                list.push(Route { gate, members: vec![member] });
            }
        }
        Ok(Claim { listener: self.clone(), path: path.to_string(), id, trigger: config.trigger, has_auth })
    }

    /// The gates of `path` with the triggers receiving behind each.
    fn routes_for(&self, path: &str) -> Vec<(Arc<Gate>, Vec<Recipient>)> {
        let routes = ktrigger_core::sync::read(&self.routes);
        let list = routes.get(path).map(Vec::as_slice).unwrap_or_default();
        list.iter()
            .map(|route| {
                let receiving = route
                    .members
                    .iter()
                    .filter_map(|m| m.sink.clone().map(|sink| (m.trigger.clone(), m.cloud_event_object, sink)))
                    .collect();
                (route.gate.clone(), receiving)
            })
            .collect()
    }

    /// Reads a request body within the size, memory and time limits; the permit holds its bytes
    /// against the listener's budget until dropped.
    async fn read_body(
        &self,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<(Bytes, Option<OwnedSemaphorePermit>), Response> {
        let max = self.options.max_body_bytes;
        let too_large = || {
            count(&self.counters.too_large);
            error(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is larger than {max} bytes"))
        };
        let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > max as u64) {
            return Err(too_large());
        }
        let mut body = body;
        let started = Instant::now();
        let deadline = started.checked_add(self.options.body_timeout).unwrap_or(started + DEFAULT_BODY_TIMEOUT);
        let mut collected: Vec<u8> = Vec::new();
        let mut held: Option<OwnedSemaphorePermit> = None;
        loop {
            let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => {
                    count(&self.counters.body_timeouts);
                    return Err(error(StatusCode::REQUEST_TIMEOUT, "the body was not received in time"));
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(error(StatusCode::BAD_REQUEST, format!("cannot read the body: {e}"))),
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(chunk) = frame.into_data() else { continue };
            if collected.len().saturating_add(chunk.len()) > max {
                return Err(too_large());
            }
            let Ok(size) = u32::try_from(chunk.len()) else { return Err(too_large()) };
            let Ok(permit) = self.buffered.clone().try_acquire_many_owned(size) else {
                count(&self.counters.over_budget);
                tracing::warn!("webhook listener holds too many request bodies; answering 503");
                return Err(error(StatusCode::SERVICE_UNAVAILABLE, "too many requests in progress; retry later"));
            };
            match &mut held {
                Some(held) => held.merge(permit),
                None => held = Some(permit),
            }
            collected.extend_from_slice(&chunk);
        }
        Ok((Bytes::from(collected), held))
    }
}

/// Removes a trailing `/` (except from `/` itself), so `/a/` and `/a` are one path.
pub(crate) fn normalize_path(path: &str) -> &str {
    if path.len() > 1 { path.strip_suffix('/').unwrap_or(path) } else { path }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": message.into()}))).into_response()
}

fn unix_now() -> i64 {
    Utc::now().timestamp()
}

async fn handle(State(listener): State<Arc<WebhookListener>>, request: Request) -> Response {
    let path = normalize_path(request.uri().path()).to_string();
    let routes = listener.routes_for(&path);
    if routes.is_empty() {
        return error(StatusCode::NOT_FOUND, "no webhook trigger listens on this path");
    }
    if request.method() != Method::POST {
        let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "use POST");
        response.headers_mut().insert(ALLOW, axum::http::HeaderValue::from_static("POST"));
        return response;
    }
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let (body, held) = match listener.read_body(&headers, body).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    let now = unix_now();
    let mut refusal = None;
    let mut accepted = Vec::new();
    for (gate, receivers) in routes {
        match gate.auth.as_ref().map_or(Ok(None), |auth| auth.verify(&headers, &body, now)) {
            Ok(delivery) => accepted.push((gate, receivers, delivery)),
            Err(reason) => refusal = refusal.or(Some(reason)),
        }
    }
    if accepted.is_empty() {
        let reason = refusal.unwrap_or(NOT_ACCEPTED);
        count(&listener.counters.unauthorized);
        tracing::info!(path, reason, "webhook request refused");
        return error(StatusCode::UNAUTHORIZED, reason);
    }
    let payload = match Payload::parse(&headers, &body) {
        Ok(payload) => payload,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let sender_id = sender_id(&headers, &accepted);
    let mut events = EventCache::new(payload, sender_id.map(|id| stable_id(&["webhook", &path, &id])));
    // The body is in the events now: waiting for the triggers holds none of the body budget.
    drop((body, held));
    let mut outcome = Answer::default();
    for (gate, receivers, delivery) in accepted {
        if let Some(DeliveryId { id, expires }) = &delivery
            && !ktrigger_core::sync::lock(&gate.seen).insert(id, *expires, now)
        {
            tracing::info!(path, delivery_id = %id, "webhook delivery already accepted; not fired again");
            outcome.duplicate = true;
            continue;
        }
        let mut stored = false;
        for (trigger, cloud_event_object, sink) in receivers {
            let event = events.get(cloud_event_object);
            let handed = tokio::time::timeout(HAND_OVER_TIMEOUT, async {
                let tracked = sink.offer_tracked(event).await?;
                Some(tracked.handled().await)
            });
            match handed.await {
                Ok(Some(handled)) => {
                    tracing::debug!(path, %trigger, id = %events.id, ?handled, "webhook event handled");
                    stored |= outcome.add(&trigger, handled);
                }
                Ok(None) => {}
                Err(_) => {
                    tracing::warn!(path, %trigger, "webhook trigger too busy to store the event in time");
                    outcome.not_stored.get_or_insert_with(|| "the trigger is too busy".into());
                }
            }
        }
        if let (false, Some(DeliveryId { id, .. })) = (stored, &delivery) {
            // Not stored: a retry of the same delivery must get through.
            ktrigger_core::sync::lock(&gate.seen).remove(id);
        }
    }
    outcome.answer(&listener, &events.id)
}

/// The sender's own id of a request, when it gives one: the delivery id header the trigger's
/// auth names (e.g. `X-GitHub-Delivery`), else an `Idempotency-Key` header. A retry of the
/// request then becomes an event with the same id.
fn sender_id(headers: &HeaderMap, accepted: &[(Arc<Gate>, Vec<Recipient>, Option<DeliveryId>)]) -> Option<String> {
    if let Some((_, _, Some(DeliveryId { id, .. }))) = accepted.iter().find(|(_, _, d)| d.is_some()) {
        return Some(id.clone());
    }
    headers
        .get(IDEMPOTENCY_KEY)
        .and_then(|value| value.to_str().ok())
        .filter(|key| !key.is_empty() && key.len() <= MAX_SENDER_ID_BYTES)
        .map(str::to_string)
}

/// One trigger's decision about a request's event, as the sender is told it.
#[derive(Debug, Serialize)]
struct Decision {
    /// The trigger, `namespace/service/trigger`.
    trigger: String,
    /// What it did: `fired`, `debouncing`, or why it did not fire (the kind only).
    outcome: Value,
}

/// What the triggers on a path did with one request.
#[derive(Debug, Default)]
struct Answer {
    /// Some trigger fired the event (or holds it for its debounce).
    fired: bool,
    /// What each trigger that took the event decided.
    decisions: Vec<Decision>,
    /// Why some trigger could not store the event.
    not_stored: Option<String>,
    /// The request repeats a delivery id already accepted.
    duplicate: bool,
}

impl Answer {
    /// Adds one trigger's answer; true when it took the event (stored, or decided to drop it).
    fn add(&mut self, trigger: &TriggerId, handled: Handled) -> bool {
        let outcome = match handled {
            Handled::Fired => json!("fired"),
            Handled::Held => json!("debouncing"),
            Handled::Dropped(outcome, _) => json!(outcome),
            Handled::NotStored(reason) => {
                self.not_stored.get_or_insert(reason);
                return false;
            }
        };
        self.fired |= outcome == "fired" || outcome == "debouncing";
        self.decisions.push(Decision { trigger: trigger.to_string(), outcome });
        true
    }

    /// 202 once every trigger that took the request stored it, saying whether it fired; 503 with
    /// Retry-After when one could not store it; 200 for a repeated delivery id.
    fn answer(self, listener: &WebhookListener, id: &str) -> Response {
        if let Some(reason) = self.not_stored {
            let mut response =
                error(StatusCode::SERVICE_UNAVAILABLE, format!("the event could not be stored: {reason}; retry later"));
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
            return response;
        }
        if !self.decisions.is_empty() {
            let body = json!({"accepted": true, "id": id, "fired": self.fired, "triggers": self.decisions});
            return (StatusCode::ACCEPTED, axum::Json(body)).into_response();
        }
        if self.duplicate {
            count(&listener.counters.duplicates);
            return (StatusCode::OK, axum::Json(json!({"duplicate": true}))).into_response();
        }
        let mut response =
            error(StatusCode::SERVICE_UNAVAILABLE, "the trigger on this path is not running or too busy");
        response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
        response
    }
}

/// A request body read as plain JSON or as a CloudEvent (structured or binary mode).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Payload {
    /// Any JSON document.
    Json(Value),
    /// A CloudEvent: its attributes (everything but `data`) and its data.
    CloudEvent {
        /// `specversion`, `id`, `type`, `source`, and optional and extension attributes.
        attributes: Map<String, Value>,
        /// The event data (`null` when absent).
        data: Value,
    },
}

impl Payload {
    /// Reads a request; errors are the reason for a 400 answer.
    pub(crate) fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Payload, String> {
        let media_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
            .unwrap_or_default();
        if media_type == "application/cloudevents-batch+json" {
            return Err("batched CloudEvents are not supported; send one event per request".into());
        }
        if media_type == "application/cloudevents+json" {
            return Self::structured(body);
        }
        if headers.contains_key("ce-specversion") {
            return Self::binary(headers, body);
        }
        serde_json::from_slice(body).map(Payload::Json).map_err(|e| format!("body is not JSON: {e}"))
    }

    fn structured(body: &[u8]) -> Result<Payload, String> {
        let value: Value = serde_json::from_slice(body).map_err(|e| format!("body is not a JSON CloudEvent: {e}"))?;
        let Value::Object(mut attributes) = value else {
            return Err("a structured CloudEvent must be a JSON object".into());
        };
        if attributes.contains_key("data_base64") {
            return Err("CloudEvents with data_base64 are not supported; send JSON data".into());
        }
        let data = attributes.remove("data").unwrap_or(Value::Null);
        check_attributes(&attributes)?;
        Ok(Payload::CloudEvent { attributes, data })
    }

    fn binary(headers: &HeaderMap, body: &[u8]) -> Result<Payload, String> {
        let mut attributes = Map::new();
        for (name, value) in headers {
            if let Some(attribute) = name.as_str().strip_prefix("ce-") {
                let text = value.to_str().map_err(|_| format!("header {name} is not visible ASCII"))?;
                attributes.insert(attribute.to_string(), Value::String(text.to_string()));
            }
        }
        if let Some(content_type) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
            attributes.insert("datacontenttype".into(), Value::String(content_type.to_string()));
        }
        check_attributes(&attributes)?;
        let data = if body.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(body).map_err(|e| format!("CloudEvent data is not JSON: {e}"))?
        };
        Ok(Payload::CloudEvent { attributes, data })
    }
}

fn check_attributes(attributes: &Map<String, Value>) -> Result<(), String> {
    for name in ["specversion", "id", "source", "type"] {
        match attributes.get(name) {
            Some(Value::String(text)) if !text.is_empty() => {}
            _ => return Err(format!("CloudEvent attribute {name:?} is missing or not a non-empty string")),
        }
    }
    Ok(())
}

/// The events one request becomes: one per kind of `object` asked for, all with the same id.
struct EventCache {
    payload: Payload,
    id: String,
    built: [Option<SharedEvent>; 2],
}

impl EventCache {
    /// The events of `payload`, with the id `id` when the sender gave one.
    fn new(payload: Payload, id: Option<String>) -> Self {
        let first = build_event(&payload, CloudEventObject::Data, id.as_deref());
        let id = first.meta.id.clone();
        EventCache { payload, id, built: [Some(Arc::new(first)), None] }
    }

    fn get(&mut self, kind: CloudEventObject) -> SharedEvent {
        let slot = match (&self.payload, kind) {
            (Payload::Json(_), _) | (_, CloudEventObject::Data) => 0,
            (Payload::CloudEvent { .. }, CloudEventObject::Event) => 1,
        };
        if let Some(event) = &self.built[slot] {
            return event.clone();
        }
        let event = Arc::new(build_event(&self.payload, kind, Some(&self.id)));
        self.built[slot] = Some(event.clone());
        event
    }
}

/// The event of a request: `receive` with the JSON for plain bodies; for CloudEvents the event's
/// type, id and time, with `object` as `kind` says.
fn build_event(payload: &Payload, kind: CloudEventObject, id: Option<&str>) -> Event {
    let mut event = match payload {
        Payload::Json(value) => Event::new("webhook", "receive", value.clone()),
        Payload::CloudEvent { attributes, data } => {
            let object = match kind {
                CloudEventObject::Data => data.clone(),
                CloudEventObject::Event => {
                    let mut whole = attributes.clone();
                    whole.insert("data".into(), data.clone());
                    Value::Object(whole)
                }
            };
            let event_type = attributes.get("type").and_then(Value::as_str).unwrap_or("receive");
            let mut event = Event::new("webhook", event_type, object);
            if let Some(ce_id) = attributes.get("id").and_then(Value::as_str) {
                event.meta.id = ce_id.to_string();
            }
            if let Some(time) = attributes.get("time").and_then(Value::as_str)
                && let Ok(time) = DateTime::parse_from_rfc3339(time)
            {
                event.meta.time = time.with_timezone(&Utc);
            }
            event
        }
    };
    if let Some(id) = id {
        event.meta.id = id.to_string();
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn plain_json_and_invalid_bodies() {
        assert_eq!(Payload::parse(&HeaderMap::new(), br#"{"a":1}"#), Ok(Payload::Json(json!({"a": 1}))));
        assert!(Payload::parse(&HeaderMap::new(), b"not json").unwrap_err().contains("not JSON"));
        assert!(Payload::parse(&HeaderMap::new(), b"").is_err());
    }

    #[test]
    fn structured_cloud_events_need_their_attributes() {
        let ce = headers(&[("content-type", "application/cloudevents+json; charset=utf-8")]);
        let body = br#"{"specversion":"1.0","id":"1","source":"s","type":"t","data":{"x":1}}"#;
        let Payload::CloudEvent { attributes, data } = Payload::parse(&ce, body).unwrap() else { panic!() };
        assert_eq!(data, json!({"x": 1}));
        assert_eq!(attributes["type"], "t");
        assert!(!attributes.contains_key("data"));
        let err = Payload::parse(&ce, br#"{"specversion":"1.0","id":"1","source":"s"}"#).unwrap_err();
        assert!(err.contains("\"type\""), "{err}");
        assert!(Payload::parse(&ce, b"[1]").is_err());
        let base64 = br#"{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"eA=="}"#;
        assert!(Payload::parse(&ce, base64).unwrap_err().contains("data_base64"));
    }

    #[test]
    fn binary_cloud_events_read_ce_headers() {
        let ce = headers(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "42"),
            ("ce-source", "/src"),
            ("ce-type", "com.example.push"),
            ("ce-myext", "v"),
            ("content-type", "application/json"),
        ]);
        let Payload::CloudEvent { attributes, data } = Payload::parse(&ce, br#"{"ref":"main"}"#).unwrap() else {
            panic!()
        };
        assert_eq!(data, json!({"ref": "main"}));
        assert_eq!(attributes["myext"], "v");
        assert_eq!(attributes["datacontenttype"], "application/json");
        let Payload::CloudEvent { data, .. } = Payload::parse(&ce, b"").unwrap() else { panic!() };
        assert_eq!(data, Value::Null);
        let missing = headers(&[("ce-specversion", "1.0"), ("ce-id", "1")]);
        assert!(Payload::parse(&missing, b"{}").is_err());
    }

    #[test]
    fn cloud_event_events_carry_type_id_and_time() {
        let mut attributes = Map::new();
        for (k, v) in
            [("specversion", "1.0"), ("id", "e-1"), ("source", "s"), ("type", "t.x"), ("time", "2026-01-02T03:04:05Z")]
        {
            attributes.insert(k.into(), json!(v));
        }
        let mut cache = EventCache::new(Payload::CloudEvent { attributes, data: json!({"d": 1}) }, None);
        let data = cache.get(CloudEventObject::Data);
        let whole = cache.get(CloudEventObject::Event);
        assert_eq!(data.object, json!({"d": 1}));
        assert_eq!(whole.object["data"], json!({"d": 1}));
        assert_eq!(whole.object["source"], "s");
        for event in [&data, &whole] {
            assert_eq!(event.meta.event_type, "t.x");
            assert_eq!(event.meta.id, "e-1");
            assert_eq!(event.meta.source, "webhook");
            assert_eq!(ktrigger_core::rfc3339(event.meta.time), "2026-01-02T03:04:05Z");
        }
        assert!(Arc::ptr_eq(&data, &cache.get(CloudEventObject::Data)));
    }

    #[tokio::test]
    async fn only_one_serve_and_none_when_detached() {
        let listener = WebhookListener::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        assert_ne!(listener.local_addr().unwrap().port(), 0);
        let cancel = CancellationToken::new();
        let first = listener.spawn(cancel.clone());
        tokio::task::yield_now().await;
        assert!(matches!(listener.clone().serve(cancel.clone()).await, Err(SourcesError::AlreadyServing)));
        cancel.cancel();
        first.await.unwrap().unwrap();

        let detached = WebhookListener::detached();
        assert_eq!(detached.local_addr(), None);
        assert!(matches!(detached.serve(CancellationToken::new()).await, Err(SourcesError::NotBound)));
    }

    #[tokio::test]
    async fn contradictory_or_unbounded_limits_are_refused_at_bind() {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let bind = |options: ListenerOptions| WebhookListener::bind_with(addr, options);
        let huge = Duration::from_secs(u64::MAX);
        let server = |f: fn(&mut ServerLimits)| {
            let mut options = ListenerOptions::default();
            f(&mut options.server);
            options
        };
        let err = bind(server(|s| s.header_timeout = Duration::from_secs(u64::MAX))).await.unwrap_err();
        assert!(err.to_string().contains("header timeout"), "{err}");
        let err = bind(server(|s| s.idle_timeout = Duration::ZERO)).await.unwrap_err();
        assert!(err.to_string().contains("idle timeout"), "{err}");
        let err = bind(ListenerOptions { body_timeout: huge, ..Default::default() }).await.unwrap_err();
        assert!(err.to_string().contains("body timeout"), "{err}");
        let err = bind(server(|s| s.max_connections = 0)).await.unwrap_err();
        assert!(err.to_string().contains("connection"), "{err}");
        let options = ListenerOptions { max_body_bytes: 2048, max_buffered_bytes: 1024, ..Default::default() };
        assert!(bind(options).await.unwrap_err().to_string().contains("largest body"));
    }

    #[tokio::test]
    async fn paths_per_trigger_service_are_under_namespace_and_service() {
        let id = TriggerId { namespace: "apps".into(), service: "deploys".into(), trigger: "push".into() };
        let options = ListenerOptions { scope: PathScope::PerTriggerService, ..Default::default() };
        let scoped = WebhookListener::bind_with("127.0.0.1:0".parse().unwrap(), options).await.unwrap();
        assert_eq!(scoped.route_path(&id, None), "/apps/deploys/push");
        assert_eq!(scoped.route_path(&id, Some("/hooks/github")), "/apps/deploys/hooks/github");
        assert_eq!(scoped.route_path(&id, Some("/")), "/apps/deploys");
        let global = WebhookListener::detached();
        assert_eq!(global.route_path(&id, None), "/webhooks/apps/deploys/push");
        assert_eq!(global.route_path(&id, Some("/hooks/github")), "/hooks/github");
    }

    #[test]
    fn paths_are_normalised() {
        assert_eq!(normalize_path("/a/"), "/a");
        assert_eq!(normalize_path("/a"), "/a");
        assert_eq!(normalize_path("/"), "/");
    }
}
