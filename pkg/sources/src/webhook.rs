//! The `webhook` source: events from HTTP POST requests to a path of the shared [`WebhookListener`].

use std::sync::Arc;

use async_trait::async_trait;
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderName};
use hmac::{Hmac, Mac};
use ktrigger_core::event::TriggerId;
use ktrigger_core::properties::{Secret, SecretRef, parse_properties};
use ktrigger_core::registry::{BuildContext, EventSink, PropertyDoc, Source, SourceError, SourceFactory, TypeDoc};
use serde::Deserialize;
use serde_json::Value;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use crate::listener::{CloudEventObject, RouteConfig, WebhookListener, normalize_path};

const DEFAULT_HMAC_HEADER: &str = "X-Signature-256";
const DEFAULT_HMAC_PREFIX: &str = "sha256=";

static DOC: TypeDoc = TypeDoc {
    name: "webhook",
    aliases: &[],
    summary: "Inbound HTTP: each JSON POST to the trigger's path (or CloudEvent, structured or binary) is one event",
    properties: &[
        PropertyDoc {
            name: "path",
            required: false,
            description: "URL path on the shared webhook listener, starting with `/`; a trailing `/` is ignored. \
                Default `/webhooks/<namespace>/<service>/<trigger>` (`/webhooks/<service>/<trigger>` without a \
                namespace). Several triggers may share a path: each request goes to every one whose auth accepts it.",
        },
        PropertyDoc {
            name: "auth",
            required: false,
            description: "Credentials requests must carry; default none (anyone who reaches the listener may \
                post). `{type: bearer, tokenFrom: SECRET}` wants `Authorization: Bearer <token>`; `{type: hmac, \
                secretFrom: SECRET, header: X-Signature-256, prefix: \"sha256=\"}` wants the hex HMAC-SHA256 of \
                the raw body in `header` after `prefix` (GitHub: header X-Hub-Signature-256). SECRET is \
                `{env: NAME}`, `{file: PATH}` or `{secretKeyRef: {name, key}}`, read when the trigger loads. \
                Failing requests get 401 and fire nothing.",
        },
        PropertyDoc {
            name: "cloudEventObject",
            required: false,
            description: "For CloudEvents: `data` (default) makes `object` the event's data; `event` makes it \
                the whole event (attributes and `data`). Either way `event.type` and `event.id` are the \
                CloudEvent's type and id. Plain JSON bodies are `object` as they are, with `event.type` `receive`.",
        },
    ],
    example: "source:
  type: webhook
  properties:
    path: /hooks/deploy
    auth:
      type: hmac
      secretFrom: {env: DEPLOY_HOOK_SECRET}
      header: X-Hub-Signature-256
",
};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Properties {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    auth: Option<AuthSpec>,
    #[serde(default)]
    cloud_event_object: CloudEventObject,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum AuthSpec {
    Bearer {
        #[serde(rename = "tokenFrom")]
        token_from: SecretRef,
    },
    Hmac {
        #[serde(rename = "secretFrom")]
        secret_from: SecretRef,
        #[serde(default)]
        header: Option<String>,
        #[serde(default)]
        prefix: Option<String>,
    },
}

/// How a request proves it may fire a webhook trigger.
pub(crate) enum Auth {
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// The expected token.
        token: Secret,
    },
    /// Hex HMAC-SHA256 of the raw body, in `header` after `prefix`.
    Hmac {
        /// The shared key.
        secret: Secret,
        /// Header carrying the signature.
        header: HeaderName,
        /// Text before the hex digits, e.g. `sha256=`.
        prefix: String,
    },
}

impl Auth {
    /// Whether the request carries the right credentials; comparisons take constant time.
    pub(crate) fn verify(&self, headers: &HeaderMap, body: &[u8]) -> bool {
        match self {
            Auth::Bearer { token } => headers.get_all(AUTHORIZATION).iter().any(|value| {
                let Some((scheme, given)) = value.to_str().ok().and_then(|v| v.trim().split_once(' ')) else {
                    return false;
                };
                scheme.eq_ignore_ascii_case("bearer")
                    && bool::from(given.trim().as_bytes().ct_eq(token.expose().as_bytes()))
            }),
            Auth::Hmac { secret, header, prefix } => {
                let Some(text) = headers.get(header).and_then(|v| v.to_str().ok()) else {
                    return false;
                };
                let Some(digits) = text.trim().strip_prefix(prefix.as_str()) else {
                    return false;
                };
                let Ok(signature) = hex::decode(digits) else {
                    return false;
                };
                let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(secret.expose().as_bytes()) else {
                    return false;
                };
                mac.update(body);
                mac.verify_slice(&signature).is_ok()
            }
        }
    }
}

/// Builds `webhook` sources that register on one shared listener.
pub struct WebhookFactory {
    listener: Arc<WebhookListener>,
}

impl WebhookFactory {
    /// A factory whose sources listen on `listener`.
    pub fn new(listener: Arc<WebhookListener>) -> Self {
        WebhookFactory { listener }
    }
}

impl SourceFactory for WebhookFactory {
    fn doc(&self) -> &'static TypeDoc {
        &DOC
    }

    fn build(&self, properties: &Value, context: &BuildContext) -> Result<Arc<dyn Source>, String> {
        let props: Properties = parse_properties(properties)?;
        let path = match &props.path {
            Some(path) => check_path(path).map_err(|e| format!("properties.path: {e}"))?,
            None => default_path(&context.trigger),
        };
        let auth = match props.auth {
            None => None,
            Some(AuthSpec::Bearer { token_from }) => {
                let token = token_from.resolve(&context.secrets, "properties.auth.tokenFrom")?;
                Some(Arc::new(Auth::Bearer { token }))
            }
            Some(AuthSpec::Hmac { secret_from, header, prefix }) => {
                let header_text = header.as_deref().unwrap_or(DEFAULT_HMAC_HEADER);
                let header = HeaderName::from_bytes(header_text.as_bytes())
                    .map_err(|_| format!("properties.auth.header: {header_text:?} is not a valid header name"))?;
                let prefix = prefix.unwrap_or_else(|| DEFAULT_HMAC_PREFIX.to_string());
                let secret = secret_from.resolve(&context.secrets, "properties.auth.secretFrom")?;
                Some(Arc::new(Auth::Hmac { secret, header, prefix }))
            }
        };
        Ok(Arc::new(WebhookSource {
            listener: self.listener.clone(),
            path,
            trigger: context.trigger.clone(),
            auth,
            cloud_event_object: props.cloud_event_object,
        }))
    }
}

/// Checks a configured path and returns it normalised.
fn check_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must start with '/'"));
    }
    if let Some(bad) = path.chars().find(|c| !c.is_ascii_graphic() || matches!(c, '?' | '#')) {
        return Err(format!("{path:?} contains {bad:?}; use a plain URL path without query or fragment"));
    }
    Ok(normalize_path(path).to_string())
}

/// `/webhooks/<namespace>/<service>/<trigger>`, or without the namespace when there is none.
fn default_path(trigger: &TriggerId) -> String {
    if trigger.namespace.is_empty() {
        format!("/webhooks/{}/{}", trigger.service, trigger.trigger)
    } else {
        format!("/webhooks/{}/{}/{}", trigger.namespace, trigger.service, trigger.trigger)
    }
}

/// A webhook trigger: its path is registered on the listener while it runs.
struct WebhookSource {
    listener: Arc<WebhookListener>,
    path: String,
    trigger: TriggerId,
    auth: Option<Arc<Auth>>,
    cloud_event_object: CloudEventObject,
}

#[async_trait]
impl Source for WebhookSource {
    async fn run(&self, sink: EventSink, cancel: CancellationToken) -> Result<(), SourceError> {
        let config = RouteConfig {
            trigger: self.trigger.clone(),
            auth: self.auth.clone(),
            cloud_event_object: self.cloud_event_object,
        };
        let _route = self.listener.add_route(&self.path, config, sink);
        if self.auth.is_none() {
            tracing::warn!(trigger = %self.trigger, path = %self.path, "webhook trigger listening without auth");
        } else {
            tracing::info!(trigger = %self.trigger, path = %self.path, "webhook trigger listening");
        }
        cancel.cancelled().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use ktrigger_core::event::SharedEvent;
    use serde_json::json;
    use tokio::sync::mpsc;

    use super::*;

    struct Harness {
        listener: Arc<WebhookListener>,
        client: reqwest::Client,
        stop: CancellationToken,
        _secrets: tempfile::TempDir,
        secrets: std::path::PathBuf,
    }

    impl Harness {
        async fn start() -> Harness {
            crate::ensure_crypto_provider();
            let listener = WebhookListener::bind_with_limit("127.0.0.1:0".parse().unwrap(), 4096).await.unwrap();
            let stop = CancellationToken::new();
            listener.spawn(stop.clone());
            let dir = tempfile::tempdir().unwrap();
            let secrets = dir.path().to_path_buf();
            Harness { listener, client: reqwest::Client::new(), stop, _secrets: dir, secrets }
        }

        fn secret_file(&self, name: &str, value: &str) -> String {
            let path = self.secrets.join(name);
            std::fs::File::create(&path).unwrap().write_all(value.as_bytes()).unwrap();
            path.display().to_string()
        }

        fn build(&self, trigger: &str, properties: Value) -> Result<Arc<dyn Source>, String> {
            let context =
                BuildContext::new(TriggerId { namespace: "ns".into(), service: "svc".into(), trigger: trigger.into() });
            WebhookFactory::new(self.listener.clone()).build(&properties, &context)
        }

        /// Runs a source and waits until its path is registered.
        async fn run(&self, trigger: &str, properties: Value) -> (mpsc::Receiver<SharedEvent>, CancellationToken) {
            let source = self.build(trigger, properties).unwrap();
            let (sink, events) = EventSink::channel(8);
            let cancel = CancellationToken::new();
            let before = self.listener.paths().len();
            let token = cancel.clone();
            tokio::spawn(async move { source.run(sink, token).await });
            for _ in 0..200 {
                if self.listener.paths().len() > before {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (events, cancel)
        }

        fn url(&self, path: &str) -> String {
            format!("http://{}{}", self.listener.local_addr().unwrap(), path)
        }

        async fn post(&self, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, Value) {
            let mut request = self.client.post(self.url(path)).body(body.to_string());
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body = response.bytes().await.unwrap();
            (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
        }
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            self.stop.cancel();
        }
    }

    fn sign(secret: &str, body: &str) -> String {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body.as_bytes());
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[tokio::test]
    async fn bearer_token_is_required_and_checked() {
        let h = Harness::start().await;
        let token = h.secret_file("token", "s3cret\n");
        let (mut events, _cancel) =
            h.run("bearer", json!({"path": "/hook", "auth": {"type": "bearer", "tokenFrom": {"file": token}}})).await;

        let (status, _) = h.post("/hook", &[("authorization", "Bearer wrong")], r#"{"a":1}"#).await;
        assert_eq!(status, 401);
        let (status, _) = h.post("/hook", &[], r#"{"a":1}"#).await;
        assert_eq!(status, 401);
        assert!(events.try_recv().is_err(), "refused requests fire nothing");

        let (status, body) = h.post("/hook/", &[("authorization", "bearer s3cret")], r#"{"a":1}"#).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["accepted"], true);
        let event = events.try_recv().expect("the event is handed over before the answer");
        assert_eq!(event.object, json!({"a": 1}));
        assert_eq!(event.meta.event_type, "receive");
        assert_eq!(event.meta.source, "webhook");
        assert_eq!(body["id"], event.meta.id.as_str());
    }

    #[tokio::test]
    async fn hmac_signature_of_the_raw_body_is_checked() {
        let h = Harness::start().await;
        let key = h.secret_file("key", "hmac-key");
        let props = json!({"path": "/gh", "auth": {"type": "hmac", "secretFrom": {"file": key}, "header": "X-Hub-Signature-256"}});
        let (mut events, _cancel) = h.run("hmac", props).await;
        let body = r#"{"ref": "refs/heads/main"}"#;

        let (status, _) = h.post("/gh", &[("x-hub-signature-256", &sign("other-key", body))], body).await;
        assert_eq!(status, 401);
        let unprefixed = sign("hmac-key", body).trim_start_matches("sha256=").to_string();
        let (status, _) = h.post("/gh", &[("x-hub-signature-256", &unprefixed)], body).await;
        assert_eq!(status, 401);
        let (status, _) = h.post("/gh", &[("x-hub-signature-256", "sha256=zz")], body).await;
        assert_eq!(status, 401);
        let (status, _) = h.post("/gh", &[], body).await;
        assert_eq!(status, 401);
        let (status, _) = h.post("/gh", &[("x-hub-signature-256", &sign("hmac-key", body))], &format!("{body} ")).await;
        assert_eq!(status, 401, "the signature covers the exact bytes");
        assert!(events.try_recv().is_err());

        let (status, _) = h.post("/gh", &[("x-hub-signature-256", &sign("hmac-key", body))], body).await;
        assert_eq!(status, 202);
        assert_eq!(events.try_recv().unwrap().object["ref"], "refs/heads/main");
    }

    #[tokio::test]
    async fn default_hmac_header_and_prefix() {
        let h = Harness::start().await;
        let key = h.secret_file("key", "k");
        let (mut events, _cancel) = h.run("t", json!({"auth": {"type": "hmac", "secretFrom": {"file": key}}})).await;
        assert_eq!(h.listener.paths(), ["/webhooks/ns/svc/t"]);
        let (status, _) = h.post("/webhooks/ns/svc/t", &[("X-Signature-256", &sign("k", "{}"))], "{}").await;
        assert_eq!(status, 202);
        assert!(events.try_recv().is_ok());
    }

    #[tokio::test]
    async fn cloud_events_in_structured_and_binary_mode() {
        let h = Harness::start().await;
        let (mut data_events, _c1) = h.run("data", json!({"path": "/ce"})).await;
        let (mut whole_events, _c2) = h.run("whole", json!({"path": "/ce", "cloudEventObject": "event"})).await;

        let structured = json!({"specversion": "1.0", "id": "ev-1", "source": "/repo", "type": "com.example.push",
            "subject": "main", "data": {"commit": "abc"}});
        let (status, body) =
            h.post("/ce", &[("content-type", "application/cloudevents+json")], &structured.to_string()).await;
        assert_eq!((status, &body["id"]), (202, &json!("ev-1")));
        let event = data_events.try_recv().unwrap();
        assert_eq!(event.object, json!({"commit": "abc"}));
        assert_eq!((event.meta.event_type.as_str(), event.meta.id.as_str()), ("com.example.push", "ev-1"));
        let whole = whole_events.try_recv().unwrap();
        assert_eq!(whole.object["subject"], "main");
        assert_eq!(whole.object["data"], json!({"commit": "abc"}));

        let headers = [
            ("ce-specversion", "1.0"),
            ("ce-id", "ev-2"),
            ("ce-source", "/repo"),
            ("ce-type", "com.example.tag"),
            ("content-type", "application/json"),
        ];
        let (status, body) = h.post("/ce", &headers, r#"{"tag": "v1"}"#).await;
        assert_eq!((status, &body["id"]), (202, &json!("ev-2")));
        let event = data_events.try_recv().unwrap();
        assert_eq!(event.object, json!({"tag": "v1"}));
        assert_eq!((event.meta.event_type.as_str(), event.meta.id.as_str()), ("com.example.tag", "ev-2"));
        let whole = whole_events.try_recv().unwrap();
        assert_eq!(whole.object["type"], "com.example.tag");
        assert_eq!(whole.object["data"], json!({"tag": "v1"}));

        let (status, _) = h.post("/ce", &[("ce-specversion", "1.0")], "{}").await;
        assert_eq!(status, 400, "a binary CloudEvent without id/source/type is refused");
    }

    #[tokio::test]
    async fn http_errors() {
        let h = Harness::start().await;
        let (mut events, cancel) = h.run("t", json!({"path": "/e"})).await;

        assert_eq!(h.post("/nowhere", &[], "{}").await.0, 404);
        let get = h.client.get(h.url("/e")).send().await.unwrap();
        assert_eq!(get.status().as_u16(), 405);
        assert_eq!(get.headers()["allow"], "POST");
        assert_eq!(h.post("/e", &[], "not json").await.0, 400);
        assert_eq!(h.post("/e", &[], &format!("\"{}\"", "x".repeat(5000))).await.0, 413);
        assert!(events.try_recv().is_err());

        // The trigger has stopped reading but its path is still registered.
        events.close();
        assert_eq!(h.post("/e", &[], "{}").await.0, 503);

        cancel.cancel();
        for _ in 0..200 {
            if h.listener.paths().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(h.post("/e", &[], "{}").await.0, 404, "a stopped trigger's path is removed");
    }

    #[tokio::test]
    async fn shared_paths_fan_out_to_the_triggers_whose_auth_accepts() {
        let h = Harness::start().await;
        let a = h.secret_file("a", "token-a");
        let b = h.secret_file("b", "token-b");
        let (mut events_a, _ca) =
            h.run("a", json!({"path": "/shared", "auth": {"type": "bearer", "tokenFrom": {"file": a}}})).await;
        let (mut events_b, _cb) =
            h.run("b", json!({"path": "/shared", "auth": {"type": "bearer", "tokenFrom": {"file": b}}})).await;
        assert_eq!(h.post("/shared", &[("authorization", "Bearer token-a")], "{}").await.0, 202);
        assert!(events_a.try_recv().is_ok());
        assert!(events_b.try_recv().is_err());
        assert_eq!(h.post("/shared", &[("authorization", "Bearer token-c")], "{}").await.0, 401);
        assert!(events_a.try_recv().is_err() && events_b.try_recv().is_err());
    }

    #[tokio::test]
    async fn load_errors_name_the_property_and_hide_secrets() {
        let h = Harness::start().await;
        let err = h.build("t", json!({"path": "hook"})).err().unwrap();
        assert!(err.starts_with("properties.path:"), "{err}");
        let err = h.build("t", json!({"path": "/a b"})).err().unwrap();
        assert!(err.starts_with("properties.path:"), "{err}");
        let err = h.build("t", json!({"auth": {"type": "basic"}})).err().unwrap();
        assert!(err.starts_with("properties.auth") && err.contains("basic"), "{err}");
        let err = h.build("t", json!({"auth": {"type": "bearer"}})).err().unwrap();
        assert!(err.contains("tokenFrom"), "{err}");
        let err = h
            .build("t", json!({"auth": {"type": "bearer", "tokenFrom": {"env": "KTRIGGER_TEST_NO_SUCH_VAR"}}}))
            .err()
            .unwrap();
        assert_eq!(err, "properties.auth.tokenFrom: environment variable KTRIGGER_TEST_NO_SUCH_VAR is not set");
        let empty = h.secret_file("empty", "\n");
        let err = h.build("t", json!({"auth": {"type": "bearer", "tokenFrom": {"file": empty}}})).err().unwrap();
        assert_eq!(err, "properties.auth.tokenFrom: the secret is empty");
        let key = h.secret_file("key", "do-not-print");
        let err = h
            .build("t", json!({"auth": {"type": "hmac", "secretFrom": {"file": key}, "header": "bad header"}}))
            .err()
            .unwrap();
        assert!(err.starts_with("properties.auth.header:") && !err.contains("do-not-print"), "{err}");
        let err = h.build("t", json!({"cloudEventObject": "all"})).err().unwrap();
        assert!(err.starts_with("properties.cloudEventObject:"), "{err}");
        let err = h.build("t", json!({"pth": "/x"})).err().unwrap();
        assert!(err.contains("pth"), "{err}");
    }
}
