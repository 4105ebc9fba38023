//! The one HTTP server every `webhook` source shares.
//!
//! The binary binds it once ([`WebhookListener::bind`]) and serves it ([`WebhookListener::serve`]);
//! each webhook source adds its path while it runs and removes it when it stops. Several triggers
//! may use the same path: a request is then handed to every one of them whose `auth` accepts it.
//!
//! Answers: 202 `{"accepted": true, "id": ...}` once the event was handed to at least one trigger;
//! 404 for a path no running trigger uses; 405 for a method other than POST; 401 when no trigger
//! on the path accepts the credentials; 413 for a body over the size limit; 400 for a body that is
//! not JSON or an invalid CloudEvent; 503 when every trigger on the path has stopped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::header::{ALLOW, CONTENT_TYPE};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use ktrigger_core::event::{Event, SharedEvent, TriggerId};
use ktrigger_core::registry::EventSink;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::SourcesError;
use crate::webhook::Auth;

/// Largest request body accepted by default (1 MiB); larger bodies get 413.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// The shared inbound HTTP server of all `webhook` sources.
pub struct WebhookListener {
    local_addr: Option<SocketAddr>,
    max_body_bytes: usize,
    socket: Mutex<Option<TcpListener>>,
    routes: RwLock<HashMap<String, Vec<Arc<Route>>>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for WebhookListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookListener").field("local_addr", &self.local_addr).finish_non_exhaustive()
    }
}

/// What `object` is for a CloudEvent: its `data` (default) or the whole event (attributes and data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CloudEventObject {
    /// `object` is the event's `data`.
    #[default]
    Data,
    /// `object` is the whole event in structured form: its attributes plus `data`.
    Event,
}

/// How one running trigger receives requests on a path.
pub(crate) struct RouteConfig {
    /// The trigger the route belongs to (for logs).
    pub trigger: TriggerId,
    /// Credentials a request must carry; `None` accepts every request.
    pub auth: Option<Arc<Auth>>,
    /// What `object` is for CloudEvents.
    pub cloud_event_object: CloudEventObject,
}

struct Route {
    id: u64,
    config: RouteConfig,
    sink: EventSink,
}

/// Keeps a path registered; dropping it removes the path.
pub(crate) struct RouteGuard {
    listener: Arc<WebhookListener>,
    path: String,
    id: u64,
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        let mut routes = self.listener.routes.write().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = routes.get_mut(&self.path) {
            list.retain(|route| route.id != self.id);
            if list.is_empty() {
                routes.remove(&self.path);
            }
        }
    }
}

impl WebhookListener {
    /// Binds `addr` (port 0 picks a free port) with the default body limit; serve it with [`Self::serve`].
    pub async fn bind(addr: SocketAddr) -> Result<Arc<Self>, SourcesError> {
        Self::bind_with_limit(addr, DEFAULT_MAX_BODY_BYTES).await
    }

    /// Binds `addr`, refusing request bodies over `max_body_bytes` with 413.
    pub async fn bind_with_limit(addr: SocketAddr, max_body_bytes: usize) -> Result<Arc<Self>, SourcesError> {
        let socket = TcpListener::bind(addr).await.map_err(|source| SourcesError::Bind { addr, source })?;
        let local_addr = socket.local_addr().map_err(|source| SourcesError::Bind { addr, source })?;
        Ok(Arc::new(WebhookListener {
            local_addr: Some(local_addr),
            max_body_bytes,
            socket: Mutex::new(Some(socket)),
            routes: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }))
    }

    /// A listener with no socket, for modes that load triggers but never receive requests
    /// (validation, listing types); webhook sources still register and unregister their paths.
    pub fn detached() -> Arc<Self> {
        Arc::new(WebhookListener {
            local_addr: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            socket: Mutex::new(None),
            routes: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        })
    }

    /// The address actually bound (useful with port 0); `None` when detached.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The paths running webhook triggers listen on, sorted.
    pub fn paths(&self) -> Vec<String> {
        let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
        let mut paths: Vec<String> = routes.keys().cloned().collect();
        paths.sort();
        paths
    }

    /// Serves requests until `cancel` fires, then finishes the requests in flight. Only one call
    /// may serve a listener; a second one gets [`SourcesError::AlreadyServing`].
    pub async fn serve(self: Arc<Self>, cancel: CancellationToken) -> Result<(), SourcesError> {
        let Some(addr) = self.local_addr else {
            return Err(SourcesError::NotBound);
        };
        let socket =
            self.socket.lock().unwrap_or_else(|e| e.into_inner()).take().ok_or(SourcesError::AlreadyServing)?;
        let app =
            Router::new().fallback(handle).layer(DefaultBodyLimit::max(self.max_body_bytes)).with_state(self.clone());
        tracing::info!(%addr, "webhook listener serving");
        axum::serve(socket, app).with_graceful_shutdown(cancel.cancelled_owned()).await.map_err(SourcesError::Serve)
    }

    /// Runs [`Self::serve`] on a new task.
    pub fn spawn(self: &Arc<Self>, cancel: CancellationToken) -> JoinHandle<Result<(), SourcesError>> {
        tokio::spawn(self.clone().serve(cancel))
    }

    /// Adds a route for `path` (already normalised) until the returned guard is dropped.
    pub(crate) fn add_route(self: &Arc<Self>, path: &str, config: RouteConfig, sink: EventSink) -> RouteGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        let list = routes.entry(path.to_string()).or_default();
        if !list.is_empty() {
            tracing::info!(path, trigger = %config.trigger, "webhook path shared by several triggers; requests fan out");
        }
        list.push(Arc::new(Route { id, config, sink }));
        RouteGuard { listener: self.clone(), path: path.to_string(), id }
    }

    fn routes_for(&self, path: &str) -> Vec<Arc<Route>> {
        let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
        routes.get(path).cloned().unwrap_or_default()
    }
}

/// Removes a trailing `/` (except from `/` itself), so `/a/` and `/a` are one path.
pub(crate) fn normalize_path(path: &str) -> &str {
    if path.len() > 1 { path.strip_suffix('/').unwrap_or(path) } else { path }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": message.into()}))).into_response()
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
    let headers = request.headers().clone();
    let body = match Bytes::from_request(request, &()).await {
        Ok(body) => body,
        Err(rejection) => return error(rejection.status(), rejection.body_text()),
    };
    let accepted: Vec<&Arc<Route>> = routes
        .iter()
        .filter(|route| route.config.auth.as_ref().is_none_or(|auth| auth.verify(&headers, &body)))
        .collect();
    if accepted.is_empty() {
        tracing::info!(path, "webhook request refused: credentials not accepted");
        return error(StatusCode::UNAUTHORIZED, "credentials not accepted");
    }
    let payload = match Payload::parse(&headers, &body) {
        Ok(payload) => payload,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let mut events = EventCache::new(payload);
    let mut delivered = false;
    for route in accepted {
        let event = events.get(route.config.cloud_event_object);
        if route.sink.send_shared(event).await {
            tracing::debug!(path, trigger = %route.config.trigger, id = %events.id, "webhook event accepted");
            delivered = true;
        }
    }
    if !delivered {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the trigger on this path has stopped");
    }
    (StatusCode::ACCEPTED, axum::Json(json!({"accepted": true, "id": events.id}))).into_response()
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
    fn new(payload: Payload) -> Self {
        let first = build_event(&payload, CloudEventObject::Data, None);
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
    use axum::http::HeaderValue;

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
        let mut cache = EventCache::new(Payload::CloudEvent { attributes, data: json!({"d": 1}) });
        let data = cache.get(CloudEventObject::Data);
        let whole = cache.get(CloudEventObject::Event);
        assert_eq!(data.object, json!({"d": 1}));
        assert_eq!(whole.object["data"], json!({"d": 1}));
        assert_eq!(whole.object["source"], "s");
        for event in [&data, &whole] {
            assert_eq!(event.meta.event_type, "t.x");
            assert_eq!(event.meta.id, "e-1");
            assert_eq!(event.meta.source, "webhook");
            assert_eq!(ktrigger_core::event::rfc3339(event.meta.time), "2026-01-02T03:04:05Z");
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

    #[test]
    fn paths_are_normalised() {
        assert_eq!(normalize_path("/a/"), "/a");
        assert_eq!(normalize_path("/a"), "/a");
        assert_eq!(normalize_path("/"), "/");
    }
}
