//! What the chat destinations (`slack`, `teams`, `dingtalk`, `lark`) share.
//!
//! - The default human message about an event ([`Summary`]): what happened, to which object, in
//!   which namespace, which trigger fired, and when. A `message` template replaces it.
//! - Webhook URLs, which are credentials themselves ([`SecretUrl`]): never shown in errors, Debug
//!   output or rendered payloads.
//! - Posting JSON and reading the answers of vendors that report errors in HTTP 200 responses.

use std::fmt;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use ktrigger_core::ClusterSecrets;
use ktrigger_core::PropertyError;
use ktrigger_core::SecretRef;
use ktrigger_core::Template;
use ktrigger_core::{DeliveryError, DeliveryRequest, Receipt};
use reqwest::header::RETRY_AFTER;
use reqwest::{RequestBuilder, StatusCode, Url};
use serde_json::Value;

use crate::http;

/// How many characters the detail line of a default message keeps at most.
const DETAIL_CHARS: usize = 500;

/// How many bytes of a 2xx answer are read at most (vendor answers are small JSON documents).
const ANSWER_READ_LIMIT: usize = 64 * 1024;

/// Query values at least this long are treated as parts of a secret URL.
const SECRET_QUERY_CHARS: usize = 8;

/// Path segments at least this long are treated as parts of a secret URL (Slack's and Lark's
/// secret segments are 24 and 36 characters; ordinary words such as `services` stay readable).
const SECRET_SEGMENT_CHARS: usize = 16;

/// One labelled value of the default message, e.g. `Namespace: apps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    /// What the value is: `Object`, `Namespace`, `Trigger`, `Event` or `Cluster`.
    pub label: &'static str,
    /// The value, as plain text.
    pub value: String,
}

/// The default message about an event, before a vendor lays it out.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// One line on what happened to what, e.g. `pod-restart: Pod web`.
    pub headline: String,
    /// For Kubernetes Events: the reason, repeat count and message.
    pub detail: Option<String>,
    /// Object, namespace, trigger, event and cluster, those that are known, in that order.
    pub facts: Vec<Fact>,
    /// When the event happened.
    pub time: DateTime<Utc>,
}

/// The object an event is about: the object itself, or the one a Kubernetes Event refers to.
#[derive(Debug, Default)]
struct Subject {
    kind: Option<String>,
    name: Option<String>,
    namespace: Option<String>,
}

impl Subject {
    fn of(object: &Value) -> Subject {
        let own_namespace = text_at(object, "/metadata/namespace");
        let referenced =
            ["involvedObject", "regarding"].iter().find_map(|key| object.get(key).filter(|v| v.is_object()));
        match referenced {
            Some(target) => Subject {
                kind: text_at(target, "/kind"),
                name: text_at(target, "/name"),
                namespace: text_at(target, "/namespace").or(own_namespace),
            },
            None => Subject {
                kind: text_at(object, "/kind"),
                name: text_at(object, "/metadata/name"),
                namespace: own_namespace,
            },
        }
    }

    /// `Pod web`, or `web` without a kind; nothing without a name.
    fn describe(&self) -> Option<String> {
        let name = self.name.as_deref()?;
        Some(match &self.kind {
            Some(kind) => format!("{kind} {name}"),
            None => name.to_string(),
        })
    }
}

impl Summary {
    /// The default message about the event of `request`.
    pub fn of(request: &DeliveryRequest<'_>) -> Summary {
        let event = request.event;
        let meta = &event.meta;
        let subject = Subject::of(&event.object);
        let what = meta.preset.as_deref().unwrap_or(&meta.event_type);
        let described = subject.describe();
        let headline = match &described {
            Some(subject) => format!("{what}: {subject}"),
            None => format!("{}: {what} from {}", request.trigger.trigger, meta.source),
        };

        let mut facts = Vec::new();
        if let Some(described) = described {
            facts.push(Fact { label: "Object", value: described });
        }
        if let Some(namespace) = subject.namespace {
            facts.push(Fact { label: "Namespace", value: namespace });
        }
        facts.push(Fact { label: "Trigger", value: request.trigger.to_string() });
        let mut happened = format!("{} from {}", meta.event_type, meta.source);
        if let Some(preset) = &meta.preset {
            happened.push_str(&format!(" (preset {preset})"));
        }
        facts.push(Fact { label: "Event", value: happened });
        if let Some(cluster) = &meta.cluster {
            facts.push(Fact { label: "Cluster", value: cluster.clone() });
        }

        Summary { headline, detail: event_detail(&event.object), facts, time: meta.time }
    }

    /// The time as people read it: `2026-10-21 07:28:00 UTC`.
    pub fn time_text(&self) -> String {
        self.time.format("%Y-%m-%d %H:%M:%S UTC").to_string()
    }

    /// The whole message as plain text: headline, detail, one `Label: value` line per fact, time.
    pub fn plain_text(&self) -> String {
        let mut lines = vec![self.headline.clone()];
        lines.extend(self.detail.clone());
        lines.extend(self.facts.iter().map(|fact| format!("{}: {}", fact.label, fact.value)));
        lines.push(format!("Time: {}", self.time_text()));
        lines.join("\n")
    }
}

/// `Reason (x3): message` of a Kubernetes Event (core/v1 or events.k8s.io/v1), shortened.
fn event_detail(object: &Value) -> Option<String> {
    let is_event = object.get("involvedObject").is_some()
        || object.get("regarding").is_some()
        || text_at(object, "/kind").as_deref() == Some("Event");
    if !is_event {
        return None;
    }
    let reason = text_at(object, "/reason");
    let message = text_at(object, "/message").or_else(|| text_at(object, "/note"));
    let count = object
        .get("count")
        .and_then(Value::as_u64)
        .or_else(|| object.pointer("/series/count").and_then(Value::as_u64))
        .filter(|count| *count > 1);
    let mut detail = reason.unwrap_or_default();
    if let Some(count) = count {
        detail.push_str(&format!(" (x{count})"));
    }
    if let Some(message) = message {
        if !detail.is_empty() {
            detail.push_str(": ");
        }
        detail.push_str(message.trim());
    }
    let detail = detail.trim().to_string();
    (!detail.is_empty()).then(|| truncate(&detail, DETAIL_CHARS))
}

/// A non-empty string at `pointer`.
fn text_at(value: &Value, pointer: &str) -> Option<String> {
    value.pointer(pointer).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string)
}

/// `text` cut to `max_chars` characters, the last one replaced by `…` when cut.
pub fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max_chars.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// The optional `title` and `message` templates of a chat destination, checked at load.
#[derive(Debug, Clone, Default)]
pub struct MessageSpec {
    title: Option<Template>,
    message: Option<Template>,
}

/// A message ready to be laid out by a vendor.
#[derive(Debug, Clone)]
pub struct Message {
    /// The rendered `title`, or the summary's headline.
    pub title: String,
    /// Whether `title` came from the `title` property.
    pub custom_title: bool,
    /// The rendered `message`, which replaces the default text when present.
    pub custom: Option<String>,
    /// The default message (also used for the title and for fallbacks).
    pub summary: Summary,
}

impl MessageSpec {
    /// Compiles the templates; errors name `properties.title` or `properties.message`.
    pub fn new(title: Option<&str>, message: Option<&str>) -> Result<Self, PropertyError> {
        let compile = |source: Option<&str>, property: &str| {
            source.map(Template::compile).transpose().map_err(|e| PropertyError::new(property, e))
        };
        Ok(MessageSpec { title: compile(title, "title")?, message: compile(message, "message")? })
    }

    /// The message for `request`.
    pub fn compose(&self, request: &DeliveryRequest<'_>) -> Result<Message, DeliveryError> {
        let summary = Summary::of(request);
        let scope = (self.title.is_some() || self.message.is_some()).then(|| request.scope());
        let render = |template: &Template, property: &str| {
            let scope = scope.as_ref().expect("a scope is made when there is a template");
            template.render(scope).map_err(|e| DeliveryError::permanent(format!("properties.{property}: {e}")))
        };
        let title = self.title.as_ref().map(|t| render(t, "title")).transpose()?;
        let custom = self.message.as_ref().map(|t| render(t, "message")).transpose()?;
        Ok(Message {
            custom_title: title.is_some(),
            title: title.unwrap_or_else(|| summary.headline.clone()),
            custom,
            summary,
        })
    }
}

/// A URL that is a credential itself (a chat webhook): shows as `<redacted>`.
#[derive(Clone)]
pub struct SecretUrl(Url);

impl SecretUrl {
    /// The URL; only for sending requests.
    pub fn expose(&self) -> &Url {
        &self.0
    }

    /// The URL and its secret-looking parts (long query values and path segments), to scrub from
    /// failure reasons in case a receiver echoes one of them.
    pub fn fragments(&self) -> Vec<String> {
        let url = &self.0;
        let long = |text: &str, chars: usize| text.chars().count() >= chars;
        let mut fragments = vec![url.to_string(), url.as_str().trim_end_matches('/').to_string()];
        fragments.extend(
            url.query_pairs().map(|(_, value)| value.into_owned()).filter(|value| long(value, SECRET_QUERY_CHARS)),
        );
        fragments.extend(
            url.path_segments()
                .into_iter()
                .flatten()
                .filter(|segment| long(segment, SECRET_SEGMENT_CHARS))
                .map(str::to_string),
        );
        fragments
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The webhook URL from `webhookUrl` (a literal) or `webhookUrlFrom` (a secret reference):
/// exactly one of them, an http or https URL. Errors never contain the URL.
pub fn webhook_url(
    literal: Option<&str>,
    reference: Option<&SecretRef>,
    secrets: &ClusterSecrets,
) -> Result<SecretUrl, PropertyError> {
    match (literal, reference) {
        (Some(_), Some(_)) => {
            Err(PropertyError::new("webhookUrlFrom", "give either webhookUrl or webhookUrlFrom, not both"))
        }
        (None, None) => Err(PropertyError::new("webhookUrl", "required (or webhookUrlFrom, a secret reference)")),
        (Some(text), None) => parse_url(text, "webhookUrl").map(SecretUrl),
        (None, Some(reference)) => {
            let secret = reference.resolve(secrets, "webhookUrlFrom")?;
            parse_url(secret.expose(), "webhookUrlFrom")
                .map(SecretUrl)
                .map_err(|e| PropertyError::new(e.path, format!("the secret's value: {}", e.message)))
        }
    }
}

/// Parses an http or https URL with a host; the error names `at` and never quotes the text.
pub fn parse_url(text: &str, path: &str) -> Result<Url, PropertyError> {
    let url = Url::parse(text.trim()).map_err(|e| PropertyError::new(path, format!("not a valid URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(PropertyError::new(path, "the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(PropertyError::new(path, "the URL has no host"));
    }
    Ok(url)
}

/// A 2xx answer: its status, `Retry-After` hint and (the start of) its body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The `Retry-After` header, when there was one.
    pub retry_after: Option<Duration>,
    /// Up to 64 KiB of the body.
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as JSON, when it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The body as text, on one line, shortened.
    pub fn snippet(&self) -> String {
        http::snippet(&String::from_utf8_lossy(&self.body))
    }

    /// The receipt `HTTP <status>`, followed by `extra` when given.
    pub fn receipt(&self, extra: Option<String>) -> Receipt {
        let mut detail = format!("HTTP {}", self.status.as_u16());
        if let Some(extra) = extra {
            detail.push_str(", ");
            detail.push_str(&extra);
        }
        Receipt { detail: Some(detail) }
    }

    /// The failure for an error reported inside this answer: `<vendor> refused the message:
    /// <what>`; transient (with the answer's `Retry-After`) when the vendor said it was rate limited.
    pub fn refused(&self, vendor: &str, what: &str, rate_limited: bool) -> DeliveryError {
        let reason = format!("{vendor} refused the message: {}", http::snippet(what));
        if rate_limited {
            DeliveryError::Transient { reason: format!("{reason} (rate limited)"), retry_after: self.retry_after }
        } else {
            DeliveryError::permanent(reason)
        }
    }

    /// The failure for a 2xx answer that is not what the vendor documents.
    pub fn unexpected(&self, vendor: &str) -> DeliveryError {
        DeliveryError::permanent(format!(
            "{vendor} answered HTTP {} with an unexpected body: {}",
            self.status.as_u16(),
            self.snippet()
        ))
    }
}

/// The integer at `key` of a JSON answer (vendors send codes as numbers, some as strings).
pub fn code_of(answer: &Value, key: &str) -> Option<i64> {
    match answer.get(key)? {
        Value::Number(number) => number.as_i64(),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

/// Sends `payload` as JSON with `request`. A non-2xx status or a transport error is the
/// delivery error it stands for (see [`http`]); a 2xx answer is returned for the vendor to read.
pub async fn post_json(request: RequestBuilder, payload: &Value) -> Result<Answer, DeliveryError> {
    let mut response = http::traced(request.json(payload)).send().await.map_err(|e| http::classify_error(&e))?;
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| http::parse_retry_after(value, SystemTime::now()));
    let status = response.status();
    if !status.is_success() {
        return Err(http::check(response).await.expect_err("a non-2xx answer is an error"));
    }
    let mut body = Vec::new();
    while body.len() < ANSWER_READ_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(error) => return Err(http::classify_error(&error)),
        }
    }
    body.truncate(ANSWER_READ_LIMIT);
    Ok(Answer { status, retry_after, body })
}

/// Secret strings as the `&str` list [`http::redact`] takes.
pub fn as_strs(secrets: &[String]) -> Vec<&str> {
    secrets.iter().map(String::as_str).collect()
}

/// Helpers of the chat destination tests: a recording HTTP receiver and sample events.
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use axum::body::Bytes;
    use axum::http::{HeaderMap, Method, Uri};
    use axum::response::Response;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use hmac::{Hmac, Mac};
    use ktrigger_core::{BuildContext, DeliveryError, DeliveryRequest, Destination, Event, Receipt, TriggerId};
    use serde_json::{Value, json};
    use sha2::Sha256;

    /// One request the receiver got.
    #[derive(Debug, Clone)]
    pub struct Recorded {
        /// HTTP method.
        pub method: String,
        /// URL path.
        pub path: String,
        /// Query parameters, form-decoded.
        pub query: BTreeMap<String, String>,
        /// Request headers.
        pub headers: HeaderMap,
        /// Raw body.
        pub body: Vec<u8>,
    }

    impl Recorded {
        /// A header as text.
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers.get(name).map(|v| v.to_str().unwrap())
        }

        /// The body as JSON.
        pub fn json(&self) -> Value {
            serde_json::from_slice(&self.body).unwrap()
        }
    }

    type Handler = dyn Fn(&Recorded) -> Response + Send + Sync;

    /// An HTTP server on 127.0.0.1 that records every request and answers with `handler`.
    pub struct Receiver {
        addr: SocketAddr,
        requests: Arc<Mutex<Vec<Recorded>>>,
    }

    impl Receiver {
        /// Serves on a free port until the test ends.
        pub async fn start(handler: impl Fn(&Recorded) -> Response + Send + Sync + 'static) -> Receiver {
            let handler: Arc<Handler> = Arc::new(handler);
            let requests = Arc::new(Mutex::new(Vec::new()));
            let recorded = requests.clone();
            let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let recorded = recorded.clone();
                let handler = handler.clone();
                async move {
                    let query = uri
                        .query()
                        .map(|q| {
                            reqwest::Url::parse(&format!("http://receiver/?{q}"))
                                .unwrap()
                                .query_pairs()
                                .into_owned()
                                .collect()
                        })
                        .unwrap_or_default();
                    let request = Recorded {
                        method: method.to_string(),
                        path: uri.path().to_string(),
                        query,
                        headers,
                        body: body.to_vec(),
                    };
                    let response = handler(&request);
                    recorded.lock().unwrap().push(request);
                    response
                }
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            Receiver { addr, requests }
        }

        /// The URL of `path` (which may carry a query) on this receiver.
        pub fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }

        /// Every request so far.
        pub fn requests(&self) -> Vec<Recorded> {
            self.requests.lock().unwrap().clone()
        }

        /// The one request so far (fails when there were more or none).
        pub fn only_request(&self) -> Recorded {
            let requests = self.requests();
            assert_eq!(requests.len(), 1, "{requests:?}");
            requests.into_iter().next().unwrap()
        }
    }

    /// base64(HMAC-SHA256(key, message)), written here for the receivers from the vendors' formulas.
    pub fn hmac_sha256_base64(key: &[u8], message: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(message);
        STANDARD.encode(mac.finalize().into_bytes())
    }

    /// The trigger of the tests: `apps/restarts/crashloop`.
    pub fn trigger() -> TriggerId {
        TriggerId { namespace: "apps".into(), service: "restarts".into(), trigger: "crashloop".into() }
    }

    /// A build context for [`trigger`].
    pub fn context() -> BuildContext {
        BuildContext::new(trigger())
    }

    /// A core/v1 Event about a restarting Pod, recognised by the `pod-restart` preset.
    pub fn k8s_event() -> Event {
        let mut event = Event::new(
            "k8s-events",
            "update",
            json!({
                "kind": "Event",
                "metadata": {"name": "web-7d9f.17a2b", "namespace": "apps"},
                "involvedObject": {"kind": "Pod", "name": "web-7d9f", "namespace": "apps"},
                "reason": "BackOff",
                "message": "Back-off restarting failed container web",
                "count": 5,
            }),
        );
        event.meta.preset = Some("pod-restart".into());
        event
    }

    /// A cron fire record: no object name.
    pub fn cron_event() -> Event {
        Event::new("cron", "fire", json!({"schedule": "*/5 * * * *", "scheduledTime": "2026-01-01T00:05:00Z"}))
    }

    /// Writes `value` and a newline to a file in `dir`; its path.
    pub fn secret_file(dir: &tempfile::TempDir, name: &str, value: &str) -> String {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("{value}\n")).unwrap();
        path.display().to_string()
    }

    /// One delivery attempt of `event`.
    pub async fn deliver(destination: &dyn Destination, event: &Event) -> Result<Receipt, DeliveryError> {
        let trigger = trigger();
        destination.deliver(&DeliveryRequest { id: "delivery-1", trigger: &trigger, event, attempt: 1 }).await
    }

    /// What `destination` would send for `event`.
    pub fn render(destination: &dyn Destination, event: &Event) -> Value {
        let trigger = trigger();
        destination.render(&DeliveryRequest { id: "delivery-1", trigger: &trigger, event, attempt: 1 }).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktrigger_core::Event;
    use serde_json::json;
    use testing::*;

    fn summary_of(event: &Event) -> Summary {
        let trigger = trigger();
        Summary::of(&DeliveryRequest { id: "d", trigger: &trigger, event, attempt: 1 })
    }

    #[test]
    fn kubernetes_events_describe_the_object_they_refer_to() {
        let event = k8s_event();
        let summary = summary_of(&event);
        assert_eq!(summary.headline, "pod-restart: Pod web-7d9f");
        assert_eq!(summary.detail.as_deref(), Some("BackOff (x5): Back-off restarting failed container web"));
        let facts: Vec<(&str, &str)> = summary.facts.iter().map(|f| (f.label, f.value.as_str())).collect();
        assert_eq!(
            facts,
            [
                ("Object", "Pod web-7d9f"),
                ("Namespace", "apps"),
                ("Trigger", "apps/restarts/crashloop"),
                ("Event", "update from k8s-events (preset pod-restart)"),
            ]
        );
        let text = summary.plain_text();
        assert!(text.starts_with("pod-restart: Pod web-7d9f\nBackOff (x5): "), "{text}");
        assert!(text.ends_with(&format!("Time: {}", event.meta.time.format("%Y-%m-%d %H:%M:%S UTC"))), "{text}");
    }

    #[test]
    fn events_k8s_io_events_use_regarding_and_note() {
        let event = Event::new(
            "k8s-events",
            "create",
            json!({"kind": "Event", "metadata": {"name": "x.1", "namespace": "ops"}, "reason": "Unhealthy",
                   "note": "Readiness probe failed", "series": {"count": 2},
                   "regarding": {"kind": "Pod", "name": "db-0"}}),
        );
        let summary = summary_of(&event);
        assert_eq!(summary.headline, "create: Pod db-0");
        assert_eq!(summary.detail.as_deref(), Some("Unhealthy (x2): Readiness probe failed"));
        assert_eq!(summary.facts[1], Fact { label: "Namespace", value: "ops".into() });
    }

    #[test]
    fn resources_use_their_own_kind_and_name() {
        let mut event = Event::new(
            "resource-watcher",
            "delete",
            json!({"kind": "Deployment", "metadata": {"name": "api", "namespace": "shop"}}),
        );
        event.meta.cluster = Some("eu-1".into());
        let summary = summary_of(&event);
        assert_eq!(summary.headline, "delete: Deployment api");
        assert_eq!(summary.detail, None);
        assert_eq!(summary.facts.last().unwrap(), &Fact { label: "Cluster", value: "eu-1".into() });
    }

    #[test]
    fn objects_without_a_name_are_described_by_the_trigger() {
        let summary = summary_of(&cron_event());
        assert_eq!(summary.headline, "crashloop: fire from cron");
        let labels: Vec<&str> = summary.facts.iter().map(|f| f.label).collect();
        assert_eq!(labels, ["Trigger", "Event"]);
    }

    #[test]
    fn long_details_are_cut() {
        let message = "m".repeat(2000);
        let event = Event::new("k8s-events", "update", json!({"involvedObject": {"name": "p"}, "message": message}));
        let detail = summary_of(&event).detail.unwrap();
        assert_eq!(detail.chars().count(), DETAIL_CHARS);
        assert!(detail.ends_with('…'));
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcd", 3), "ab…");
    }

    #[test]
    fn webhook_urls_are_checked_and_never_shown() {
        let none = ClusterSecrets::default();
        let err = webhook_url(None, None, &none).unwrap_err().to_string();
        assert!(err.starts_with("properties.webhookUrl: required"), "{err}");
        let err = webhook_url(Some("ftp://hooks.example.com/T0/B0/secret-path"), None, &none).unwrap_err().to_string();
        assert_eq!(err, "properties.webhookUrl: the scheme must be http or https");
        let err = webhook_url(Some("not a url secret-path"), None, &none).unwrap_err().to_string();
        assert!(err.starts_with("properties.webhookUrl: not a valid URL") && !err.contains("secret-path"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let file =
            secret_file(&dir, "url", "https://hooks.example.com/services/T0/B0/abcdefghijklmnop?token=0123456789");
        let reference = SecretRef { env: None, file: Some(file), secret_key_ref: None };
        let url = webhook_url(None, Some(&reference), &none).unwrap();
        assert_eq!(format!("{url:?} {url}"), "<redacted> <redacted>");
        let fragments = url.fragments();
        assert!(fragments.contains(&"abcdefghijklmnop".to_string()) && fragments.contains(&"0123456789".to_string()));
        assert!(!fragments.iter().any(|f| f == "T0" || f == "services"), "{fragments:?}");

        let bad = secret_file(&dir, "bad", "hooks.example.com/secret-path");
        let reference = SecretRef { env: None, file: Some(bad), secret_key_ref: None };
        let err = webhook_url(None, Some(&reference), &none).unwrap_err().to_string();
        assert!(err.starts_with("properties.webhookUrlFrom: the secret's value: not a valid URL"), "{err}");
        assert!(!err.contains("secret-path"), "{err}");
    }

    #[test]
    fn unreadable_or_empty_secrets_are_errors_naming_the_property() {
        let none = ClusterSecrets::default();
        let reference = SecretRef { env: Some("KTRIGGER_TEST_CHAT_UNSET".into()), file: None, secret_key_ref: None };
        let err = webhook_url(None, Some(&reference), &none).unwrap_err().to_string();
        assert_eq!(err, "properties.webhookUrlFrom: environment variable KTRIGGER_TEST_CHAT_UNSET is not set");
        let dir = tempfile::tempdir().unwrap();
        let empty = SecretRef { env: None, file: Some(secret_file(&dir, "empty", "")), secret_key_ref: None };
        let err = webhook_url(None, Some(&empty), &none).unwrap_err().to_string();
        assert_eq!(err, "properties.webhookUrlFrom: the secret is empty");
    }

    #[test]
    fn chat_docs_are_complete_and_their_examples_load() {
        use ktrigger_core::{DestinationFactory, TypedDestination};
        let factories: [&dyn DestinationFactory; 4] = [
            &TypedDestination::new(crate::slack::SlackFactory::new()),
            &TypedDestination::new(crate::teams::TeamsFactory::new()),
            &TypedDestination::new(crate::dingtalk::DingTalkFactory::new()),
            &TypedDestination::new(crate::lark::LarkFactory::new()),
        ];
        for factory in factories {
            let doc = factory.doc();
            assert!(!doc.summary.is_empty(), "{}", doc.name);
            for property in &doc.properties {
                assert!(property.description.len() > 20, "{}.{}", doc.name, property.name);
                if !property.required && !property.name.starts_with("webhookUrl") && property.name != "tokenFrom" {
                    assert!(
                        property.description.contains("default"),
                        "{}.{} names no default",
                        doc.name,
                        property.name
                    );
                }
            }
            let example: Value = serde_yaml::from_str(&doc.example).unwrap();
            assert_eq!(example["type"], doc.name);
            for key in example["properties"].as_object().unwrap().keys() {
                assert!(doc.properties.iter().any(|p| &p.name == key), "{}: {key} is not documented", doc.name);
            }
            // Secrets are read last: an unset variable means everything else loaded.
            if let Err(e) = factory.build(&example["properties"], &context()).map_err(|e| e.to_string()) {
                assert!(e.contains("environment variable") && e.contains("is not set"), "{}: {e}", doc.name);
            }
        }
    }

    #[test]
    fn codes_read_numbers_and_strings() {
        assert_eq!(code_of(&json!({"errcode": 310000}), "errcode"), Some(310000));
        assert_eq!(code_of(&json!({"code": "19021"}), "code"), Some(19021));
        assert_eq!(code_of(&json!({"code": null}), "code"), None);
        assert_eq!(code_of(&json!({}), "code"), None);
    }
}
