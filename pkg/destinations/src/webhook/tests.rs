//! Tests of the `webhook` destination against a real local HTTP server.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap as AxumHeaders, Method as AxumMethod, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use ktrigger_core::{DestinationFactory, Event, TypedDestination, parse_properties};

use super::*;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    headers: AxumHeaders,
    body: Vec<u8>,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// An HTTP server on 127.0.0.1 that records every request and answers by path:
/// `/unavailable` 503 with `Retry-After: 7`, `/bad` 400 echoing the request headers, `/busy` 429,
/// `/hang` never, anything else 200.
struct Receiver {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        let app =
            axum::Router::new().fallback(move |method: AxumMethod, uri: Uri, headers: AxumHeaders, body: Bytes| {
                let recorded = recorded.clone();
                async move {
                    let path = uri.path().to_string();
                    recorded.lock().unwrap().push(Recorded {
                        method: method.to_string(),
                        path: path.clone(),
                        headers: headers.clone(),
                        body: body.to_vec(),
                    });
                    answer(&path, &headers).await
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { addr, requests }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    fn only_request(&self) -> Recorded {
        let requests = self.requests();
        assert_eq!(requests.len(), 1, "{requests:?}");
        requests.into_iter().next().unwrap()
    }
}

async fn answer(path: &str, headers: &AxumHeaders) -> Response {
    match path {
        "/unavailable" => (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "7")], "try later").into_response(),
        "/bad" => {
            let echo: Vec<String> = headers.iter().map(|(n, v)| format!("{n}={}", v.to_str().unwrap_or(""))).collect();
            (StatusCode::BAD_REQUEST, format!("rejected; you sent {}", echo.join(" "))).into_response()
        }
        "/busy" => StatusCode::TOO_MANY_REQUESTS.into_response(),
        "/hang" => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK.into_response()
        }
        _ => (StatusCode::OK, "ok").into_response(),
    }
}

fn trigger() -> TriggerId {
    TriggerId { namespace: "apps".into(), service: "watch".into(), trigger: "pods".into() }
}

fn context() -> BuildContext {
    BuildContext::new(trigger())
}

fn event() -> Event {
    let mut event = Event::new(
        "resource-watcher",
        "update",
        json!({"metadata": {"name": "web", "namespace": "apps"}, "status": {"phase": "Running"}}),
    );
    event.old_object = Some(json!({"metadata": {"name": "web", "namespace": "apps"}, "status": {"phase": "Pending"}}));
    event
}

fn build(properties: Value) -> Arc<dyn Destination> {
    TypedDestination::new(WebhookFactory::new()).build(&properties, &context()).map_err(|e| e.to_string()).unwrap()
}

fn build_err(properties: Value) -> String {
    TypedDestination::new(WebhookFactory::new())
        .build(&properties, &context())
        .map_err(|e| e.to_string())
        .err()
        .expect("the properties should be refused")
}

/// A built destination with its concrete type, for looking at its Debug output.
fn build_concrete(properties: Value) -> Webhook {
    Webhook::new(parse_properties(&properties).unwrap(), &context(), http::shared_client().unwrap()).unwrap()
}

async fn deliver(destination: &Arc<dyn Destination>, event: &Event, id: &str) -> Result<Receipt, DeliveryError> {
    let trigger = trigger();
    destination.deliver(&DeliveryRequest { id, trigger: &trigger, event, attempt: 1 }).await
}

fn secret_file(dir: &tempfile::TempDir, name: &str, value: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, format!("{value}\n")).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn sends_a_structured_cloudevent() {
    let receiver = Receiver::start().await;
    let destination = build(json!({"url": receiver.url("/hook")}));
    let event = event();

    let receipt = deliver(&destination, &event, "delivery-1").await.unwrap();
    assert_eq!(receipt.detail.as_deref(), Some("HTTP 200"));

    let request = receiver.only_request();
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/hook");
    assert_eq!(request.header("content-type"), Some(CLOUDEVENTS_CONTENT_TYPE));
    assert_eq!(request.header(DELIVERY_ID_HEADER), Some("delivery-1"));
    assert_eq!(request.header(IDEMPOTENCY_KEY_HEADER), Some("delivery-1"));
    assert!(request.header("ce-id").is_none(), "structured mode has no ce- headers");
    let sent = request.json();
    assert_eq!(sent["specversion"], "1.0");
    assert_eq!(sent["id"], "delivery-1");
    assert_eq!(sent["source"], "ktrigger/apps/watch/pods");
    assert_eq!(sent["type"], "dev.ktrigger.update");
    assert_eq!(sent["time"], rfc3339(event.meta.time));
    assert_eq!(sent["subject"], "web");
    assert_eq!(sent["datacontenttype"], "application/json");
    assert_eq!(sent["data"]["object"], event.object);
    assert_eq!(sent["data"]["oldObject"]["status"]["phase"], "Pending");
    assert_eq!(sent["data"]["event"]["id"], event.meta.id);
    assert_eq!(sent["data"]["event"]["type"], "update");
    assert_eq!(sent["data"]["event"]["trigger"], "pods");

    // A retry of the same delivery carries the same id, so receivers can drop duplicates.
    let trigger = trigger();
    destination
        .deliver(&DeliveryRequest { id: "delivery-1", trigger: &trigger, event: &event, attempt: 2 })
        .await
        .unwrap();
    assert_eq!(receiver.requests()[1].json()["id"], "delivery-1");
}

#[tokio::test]
async fn objects_without_a_name_have_no_subject() {
    let receiver = Receiver::start().await;
    let destination = build(json!({"url": receiver.url("/")}));
    deliver(&destination, &Event::new("cron", "fire", json!({"schedule": "@hourly"})), "d").await.unwrap();
    let sent = receiver.only_request().json();
    assert!(sent.get("subject").is_none(), "{sent}");
    assert!(sent["data"].get("oldObject").is_none(), "{sent}");
    assert_eq!(sent["type"], "dev.ktrigger.fire");
}

#[tokio::test]
async fn sends_a_custom_body_as_it_is() {
    let receiver = Receiver::start().await;
    let destination = build(json!({
        "url": receiver.url("/custom"),
        "method": "put",
        "format": "raw",
        "body": "{{ object.metadata.name }} is {{ object.status.phase }} (was {{ oldObject.status.phase }})",
        "contentType": "text/plain; charset=utf-8",
    }));
    deliver(&destination, &event(), "d-2").await.unwrap();
    let request = receiver.only_request();
    assert_eq!(request.method, "PUT");
    assert_eq!(request.body, b"web is Running (was Pending)");
    assert_eq!(request.header("content-type"), Some("text/plain; charset=utf-8"));
    assert!(request.header("ce-id").is_none());
}

#[tokio::test]
async fn a_custom_body_of_a_cloudevent_goes_in_binary_mode() {
    let receiver = Receiver::start().await;
    let destination = build(json!({
        "url": receiver.url("/binary"),
        "body": r#"{"pod": "{{ object.metadata.name }}"}"#,
    }));
    let event = event();
    deliver(&destination, &event, "d-3").await.unwrap();
    let request = receiver.only_request();
    assert_eq!(request.json(), json!({"pod": "web"}));
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("ce-specversion"), Some("1.0"));
    assert_eq!(request.header("ce-id"), Some("d-3"));
    assert_eq!(request.header("ce-source"), Some("ktrigger/apps/watch/pods"));
    assert_eq!(request.header("ce-type"), Some("dev.ktrigger.update"));
    assert_eq!(request.header("ce-subject"), Some("web"));
    assert_eq!(request.header("ce-time"), Some(rfc3339(event.meta.time).as_str()));
}

#[tokio::test]
async fn raw_format_sends_the_event_context() {
    let receiver = Receiver::start().await;
    let destination = build(json!({"url": receiver.url("/raw"), "format": "raw"}));
    let event = event();
    deliver(&destination, &event, "d-4").await.unwrap();
    let request = receiver.only_request();
    assert_eq!(request.header("content-type"), Some("application/json"));
    let sent = request.json();
    assert_eq!(sent["object"], event.object);
    assert_eq!(sent["oldObject"], event.old_object.clone().unwrap());
    assert_eq!(sent["event"]["id"], event.meta.id);
    assert_eq!(sent["context"]["data"], event.object);
    assert_eq!(sent["context"]["event"], "update");
    assert!(sent["now"].is_string());
}

#[tokio::test]
async fn headers_come_from_literals_and_secret_files() {
    let dir = tempfile::tempdir().unwrap();
    let token = secret_file(&dir, "token", "Bearer tok-123456");
    let receiver = Receiver::start().await;
    let properties = json!({
        "url": receiver.url("/auth"),
        "headers": {"Authorization": {"file": token}, "X-Team": "platform"},
    });
    let destination = build(properties.clone());
    deliver(&destination, &event(), "d-5").await.unwrap();
    let request = receiver.only_request();
    assert_eq!(request.header("authorization"), Some("Bearer tok-123456"));
    assert_eq!(request.header("x-team"), Some("platform"));

    let trigger = trigger();
    let event = event();
    let rendered =
        destination.render(&DeliveryRequest { id: "d-5", trigger: &trigger, event: &event, attempt: 1 }).unwrap();
    assert_eq!(rendered["headers"]["authorization"], "<redacted>");
    assert_eq!(rendered["headers"]["x-team"], "platform");
    assert_eq!(rendered["body"]["id"], "d-5");
    assert!(!rendered.to_string().contains("tok-123456"), "{rendered}");

    let debug = format!("{:?}", build_concrete(properties));
    assert!(!debug.contains("tok-123456"), "{debug}");
    assert!(debug.contains("authorization"), "{debug}");
}

#[tokio::test]
async fn signs_the_exact_body_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let key = secret_file(&dir, "hmac", "hmac-key-789");
    let receiver = Receiver::start().await;
    let destination = build(json!({"url": receiver.url("/signed"), "signature": {"secretFrom": {"file": key}}}));
    deliver(&destination, &event(), "d-6").await.unwrap();
    let request = receiver.only_request();
    let signature = request.header("x-ktrigger-signature-256").expect("signature header");
    let digest = hex::decode(signature.strip_prefix("sha256=").expect("sha256= prefix")).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(b"hmac-key-789").unwrap();
    mac.update(&request.body);
    mac.verify_slice(&digest).expect("the signature verifies over the received body");

    let destination = build(json!({
        "url": receiver.url("/signed"),
        "body": "{{ event.type }}",
        "format": "raw",
        "signature": {"secretFrom": {"file": secret_file(&dir, "hmac2", "k")}, "header": "X-Hub-Signature-256"},
    }));
    deliver(&destination, &event(), "d-7").await.unwrap();
    let request = receiver.requests().pop().unwrap();
    assert_eq!(request.header("x-hub-signature-256"), Some(sign("k", b"update").as_str()));
}

#[tokio::test]
async fn service_unavailable_is_transient_with_retry_after() {
    let receiver = Receiver::start().await;
    let destination = build(json!({"url": receiver.url("/unavailable")}));
    match deliver(&destination, &event(), "d").await.unwrap_err() {
        DeliveryError::Transient { reason, retry_after } => {
            assert_eq!(retry_after, Some(Duration::from_secs(7)));
            assert_eq!(reason, "HTTP 503 Service Unavailable: try later");
        }
        other => panic!("expected a transient error, got {other:?}"),
    }
}

#[tokio::test]
async fn too_many_requests_is_transient() {
    let receiver = Receiver::start().await;
    let destination = build(json!({"url": receiver.url("/busy")}));
    let error = deliver(&destination, &event(), "d").await.unwrap_err();
    assert_eq!(error, DeliveryError::Transient { reason: "HTTP 429 Too Many Requests".into(), retry_after: None });
}

#[tokio::test]
async fn bad_request_is_permanent_and_never_shows_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let token = secret_file(&dir, "token", "tok-abcdef");
    let key = secret_file(&dir, "key", "key-ghijkl");
    let receiver = Receiver::start().await;
    let properties = json!({
        "url": receiver.url("/bad"),
        "headers": {"X-Api-Key": {"file": token}},
        "signature": {"secretFrom": {"file": key}},
    });
    let destination = build(properties.clone());
    let error = deliver(&destination, &event(), "d").await.unwrap_err();
    let DeliveryError::Permanent { reason } = &error else { panic!("expected a permanent error, got {error:?}") };
    assert!(reason.starts_with("HTTP 400 Bad Request: rejected; you sent"), "{reason}");
    // The receiver echoed the request headers; the secret among them is scrubbed.
    assert!(reason.contains("x-api-key=<redacted>"), "{reason}");
    for text in [reason.clone(), format!("{error:?}"), format!("{:?}", build_concrete(properties))] {
        assert!(!text.contains("tok-abcdef") && !text.contains("key-ghijkl"), "{text}");
    }
}

#[tokio::test]
async fn connection_refused_is_transient() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let destination = build(json!({"url": format!("http://user:pw-secret@{addr}/refused")}));
    let error = deliver(&destination, &event(), "d").await.unwrap_err();
    let DeliveryError::Transient { reason, retry_after: None } = &error else {
        panic!("expected a transient error, got {error:?}")
    };
    assert!(reason.starts_with("connection failed"), "{reason}");
    assert!(!reason.contains("pw-secret") && !reason.contains("/refused"), "{reason}");
}

#[tokio::test]
async fn a_server_that_never_answers_is_cut_by_the_client_timeout() {
    let receiver = Receiver::start().await;
    let client = http::http_client(Some(Duration::from_millis(300)), Default::default()).unwrap();
    let destination = TypedDestination::new(WebhookFactory::with_client(client))
        .build(&json!({"url": receiver.url("/hang")}), &context())
        .map_err(|e| e.to_string())
        .unwrap();
    let started = std::time::Instant::now();
    let error = deliver(&destination, &event(), "d").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    let DeliveryError::Transient { reason, .. } = &error else { panic!("expected a transient error, got {error:?}") };
    assert!(reason.starts_with("request timed out"), "{reason}");
}

#[test]
fn invalid_properties_are_refused_with_the_property_named() {
    let cases = [
        (json!({}), "properties: missing field `url`"),
        (json!({"url": "not a url"}), "properties.url: not a valid URL"),
        (json!({"url": "ftp://example.com/x"}), "properties.url: the scheme must be http or https, not ftp"),
        (json!({"url": "http://h/", "uri": "x"}), "properties.uri: unknown field `uri`"),
        (json!({"url": "http://h/", "method": "GE T"}), "properties.method:"),
        (json!({"url": "http://h/", "format": "xml"}), "properties.format: unknown variant `xml`"),
        (
            json!({"url": "http://h/", "body": "{{ pod.name }}"}),
            "properties.body: unknown variable(s) pod in template; available: object, oldObject, event, context, now",
        ),
        (json!({"url": "http://h/", "body": "{{ object. }}"}), "properties.body:"),
        (
            json!({"url": "http://h/", "headers": {"Bad Name": "x"}}),
            "properties.headers.Bad Name: not a valid header name",
        ),
        (json!({"url": "http://h/", "headers": {"X-A": "a\nb"}}), "properties.headers.X-A: not a valid header value"),
        (json!({"url": "http://h/", "headers": {"X-A": 3}}), "properties.headers.X-A: expected a string or a secret"),
        (
            json!({"url": "http://h/", "headers": {"X-A": {"envv": "A"}}}),
            "properties.headers.X-A: unknown field `envv`",
        ),
        (
            json!({"url": "http://h/", "headers": {"X-A": {"env": "KTRIGGER_TEST_SURELY_UNSET"}}}),
            "properties.headers.X-A: environment variable KTRIGGER_TEST_SURELY_UNSET is not set",
        ),
        (
            json!({"url": "http://h/", "headers": {"content-type": "text/plain"}}),
            "set the content type with properties.contentType",
        ),
        (json!({"url": "http://h/", "contentType": "text/plain"}), "properties.contentType: only applies"),
        (json!({"url": "http://h/", "signature": {}}), "properties.signature: missing field `secretFrom`"),
        (
            json!({"url": "http://h/", "signature": {"secretFrom": {"file": "/nonexistent/ktrigger-key"}}}),
            "properties.signature.secretFrom: cannot read /nonexistent/ktrigger-key",
        ),
    ];
    for (properties, expected) in cases {
        let error = build_err(properties.clone());
        assert!(error.starts_with(expected) || error.contains(expected), "{properties}: {error}");
    }
}

#[test]
fn sources_are_uri_references() {
    let trigger = TriggerId { namespace: String::new(), service: "local file".into(), trigger: "a/b".into() };
    assert_eq!(cloudevents_source(&trigger), "ktrigger/local%20file/a%2Fb");
    assert_eq!(cloudevents_source(&super::tests::trigger()), "ktrigger/apps/watch/pods");
}

async fn deliver_batch(destination: &Arc<dyn Destination>, events: &[Event], ids: &[&str]) -> Receipt {
    let trigger = trigger();
    let requests: Vec<DeliveryRequest<'_>> = events
        .iter()
        .zip(ids)
        .map(|(event, id)| DeliveryRequest { id, trigger: &trigger, event, attempt: 1 })
        .collect();
    destination.deliver_batch(&requests).await.unwrap()
}

#[tokio::test]
async fn a_batch_of_cloudevents_goes_in_batch_mode() {
    let receiver = Receiver::start().await;
    let destination = build(json!({"url": receiver.url("/hook")}));
    assert!(destination.batches());
    let events = [event(), event()];
    deliver_batch(&destination, &events, &["d-1", "d-2"]).await;
    let request = receiver.only_request();
    assert_eq!(request.header("content-type"), Some(CLOUDEVENTS_BATCH_CONTENT_TYPE));
    let batch_id = stable_id(&["d-1", "d-2"]);
    assert_eq!(request.header(IDEMPOTENCY_KEY_HEADER), Some(batch_id.as_str()));
    let sent = request.json();
    let ids: Vec<&str> = sent.as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["d-1", "d-2"]);
    assert_eq!(sent[1]["data"]["event"]["id"], events[1].meta.id);
}

#[tokio::test]
async fn a_batch_of_custom_bodies_is_a_json_array_signed_as_a_whole() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = secret_file(&dir, "key", "k3y");
    let destination = build(json!({
        "url": receiver.url("/hook"), "format": "raw",
        "body": "{\"phase\": \"{{ object.status.phase }}\"}",
        "signature": {"secretFrom": {"file": key}},
    }));
    deliver_batch(&destination, &[event(), event()], &["a", "b"]).await;
    let request = receiver.only_request();
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.json(), json!([{"phase": "Running"}, {"phase": "Running"}]));
    assert_eq!(request.header(DEFAULT_SIGNATURE_HEADER), Some(sign("k3y", &request.body).as_str()));
}
