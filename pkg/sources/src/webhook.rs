//! The `webhook` source: events from HTTP POST requests to a path of the shared [`WebhookListener`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::http::HeaderName;
use ktrigger_core::PropertyError;
use ktrigger_core::SecretRef;
use ktrigger_core::SourceType;
use ktrigger_core::{BuildContext, EventSink, Source, SourceError};
use schemars::JsonSchema;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::auth::{Auth, HmacAuth};
use crate::listener::{Claim, CloudEventObject, RouteConfig, WebhookListener, normalize_path};
use crate::replay::{DEFAULT_TOLERANCE, MAX_TOLERANCE, SignedContent};

const DEFAULT_HMAC_HEADER: &str = "X-Signature-256";
const DEFAULT_HMAC_PREFIX: &str = "sha256=";

/// Inbound HTTP: each JSON POST to the trigger's path (or CloudEvent, structured or binary) is
/// one event.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookProperties {
    /// URL path starting with `/`; a trailing `/` is ignored, empty, `.` and `..` segments are
    /// refused. Under `ktrigger controller` the URL is `/<namespace>/<service><path>` (default
    /// path `/<trigger>`), so a TriggerService only ever receives requests sent to its own
    /// prefix. Under `ktrigger run` the path is used as it is (default
    /// `/webhooks/<namespace>/<service>/<trigger>`, `/webhooks/<service>/<trigger>` without a
    /// namespace). Triggers may share a path only with equal `auth`; each accepted request then
    /// goes to all of them. A trigger whose path is taken by a trigger with different `auth` is
    /// not loaded.
    #[serde(default)]
    path: Option<String>,
    /// Credentials requests must carry; default none (anyone who reaches the listener may
    /// post). `{type: bearer, tokenFrom: SECRET}` wants `Authorization: Bearer <token>`;
    /// `{type: hmac, secretFrom: SECRET, header: X-Signature-256, prefix: "sha256="}` wants the
    /// hex HMAC-SHA256 of the raw body in `header` after `prefix` (GitHub: header
    /// X-Hub-Signature-256). SECRET is `{env: NAME}`, `{file: PATH}` or
    /// `{secretKeyRef: {name, key}}`, read when the trigger loads. Failing requests get 401 and
    /// fire nothing. Replay protection for hmac: `timestampHeader` names a header with the Unix
    /// time in seconds, which must be within `tolerance` (default 5m, 1s to 1h) of now and is
    /// signed; `deliveryIdHeader` names a header with an id unique per delivery (GitHub:
    /// X-GitHub-Delivery): a request whose id was accepted within `tolerance` is answered 200
    /// `{"duplicate": true}` and fires nothing; requests without the header get 401.
    /// `signedContent` says what is signed, with the placeholders `{timestamp}`, `{deliveryId}`
    /// and `{body}`: default `{timestamp}.{body}` with a timestamp header (Stripe), else
    /// `{body}`; Slack: `v0:{timestamp}:{body}` with prefix `v0=`.
    #[serde(default)]
    auth: Option<AuthSpec>,
    /// For CloudEvents: `data` (default) makes `object` the event's data; `event` makes it the
    /// whole event (attributes and `data`). Either way `event.type` and `event.id` are the
    /// CloudEvent's type and id. Plain JSON bodies are `object` as they are, with `event.type`
    /// `receive`.
    #[serde(default)]
    cloud_event_object: CloudEventObject,
}

/// Credentials requests must carry.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase", rename_all_fields = "camelCase", deny_unknown_fields)]
enum AuthSpec {
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// The expected token.
        token_from: SecretRef,
    },
    /// Hex HMAC-SHA256 of the signed content in a header.
    Hmac {
        /// The shared key.
        secret_from: SecretRef,
        /// Header carrying the signature; default X-Signature-256.
        #[serde(default)]
        header: Option<String>,
        /// Text before the hex digits; default `sha256=`.
        #[serde(default)]
        prefix: Option<String>,
        /// Header with the request's Unix time in seconds, signed and checked against `tolerance`.
        #[serde(default)]
        timestamp_header: Option<String>,
        /// Header with an id unique per delivery; repeats within `tolerance` fire nothing.
        #[serde(default)]
        delivery_id_header: Option<String>,
        /// How far the timestamp may be from now; default 5m, 1s to 1h.
        #[serde(default)]
        tolerance: Option<String>,
        /// What is signed, with `{timestamp}`, `{deliveryId}` and `{body}`.
        #[serde(default)]
        signed_content: Option<String>,
    },
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

impl SourceType for WebhookFactory {
    type Properties = WebhookProperties;
    const NAME: &'static str = "webhook";
    const EXAMPLE: &'static str = "source:
  type: webhook
  properties:
    path: /hooks/deploy
    auth:
      type: hmac
      secretFrom: {env: DEPLOY_HOOK_SECRET}
      header: X-Hub-Signature-256
";

    fn build(&self, props: WebhookProperties, context: &BuildContext) -> Result<Arc<dyn Source>, PropertyError> {
        let path = match &props.path {
            Some(path) => Some(check_path(path).map_err(|e| PropertyError::new("path", e))?),
            None => None,
        };
        let path = self.listener.route_path(&context.trigger, path.as_deref());
        let auth = match props.auth {
            None => None,
            Some(AuthSpec::Bearer { token_from }) => {
                let token = token_from.resolve(&context.secrets, "auth.tokenFrom")?;
                Some(Arc::new(Auth::Bearer { token }))
            }
            Some(AuthSpec::Hmac {
                secret_from,
                header,
                prefix,
                timestamp_header,
                delivery_id_header,
                tolerance,
                signed_content,
            }) => {
                let header = header_name("header", header.as_deref().unwrap_or(DEFAULT_HMAC_HEADER))?;
                let timestamp_header = timestamp_header.map(|h| header_name("timestampHeader", &h)).transpose()?;
                let delivery_id_header = delivery_id_header.map(|h| header_name("deliveryIdHeader", &h)).transpose()?;
                let tolerance = match tolerance {
                    None => DEFAULT_TOLERANCE,
                    Some(text) => check_tolerance(&text).map_err(|e| PropertyError::new("auth.tolerance", e))?,
                };
                let signed = match signed_content {
                    Some(format) => SignedContent::parse(&format),
                    None if timestamp_header.is_some() => SignedContent::parse("{timestamp}.{body}"),
                    None => Ok(SignedContent::body()),
                }
                .map_err(|e| PropertyError::new("auth.signedContent", e))?;
                if timestamp_header.is_some() != signed.has_timestamp() {
                    return Err(PropertyError::new(
                        "auth.signedContent",
                        "{timestamp} is signed exactly when timestampHeader is set; an unsigned timestamp \
                         protects nothing",
                    ));
                }
                if signed.has_delivery_id() && delivery_id_header.is_none() {
                    return Err(PropertyError::new("auth.signedContent", "{deliveryId} needs deliveryIdHeader"));
                }
                let prefix = prefix.unwrap_or_else(|| DEFAULT_HMAC_PREFIX.to_string());
                let secret = secret_from.resolve(&context.secrets, "auth.secretFrom")?;
                Some(Arc::new(Auth::Hmac(HmacAuth {
                    secret,
                    header,
                    prefix,
                    signed,
                    timestamp_header,
                    delivery_id_header,
                    tolerance,
                })))
            }
        };
        let config =
            RouteConfig { trigger: context.trigger.clone(), auth, cloud_event_object: props.cloud_event_object };
        let claim = self.listener.claim(&path, config).map_err(|e| PropertyError::new("path", e))?;
        Ok(Arc::new(WebhookSource { claim }))
    }
}

fn header_name(property: &str, text: &str) -> Result<HeaderName, PropertyError> {
    HeaderName::from_bytes(text.as_bytes())
        .map_err(|_| PropertyError::new(format!("auth.{property}"), format!("{text:?} is not a valid header name")))
}

fn check_tolerance(text: &str) -> Result<Duration, String> {
    let tolerance = ktrigger_api::parse_duration(text)?;
    if tolerance < Duration::from_secs(1) || tolerance > MAX_TOLERANCE {
        return Err(format!("{text:?} must be between 1s and {}s", MAX_TOLERANCE.as_secs()));
    }
    Ok(tolerance)
}

/// Checks a configured path and returns it normalised.
fn check_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must start with '/'"));
    }
    if let Some(bad) = path.chars().find(|c| !c.is_ascii_graphic() || matches!(c, '?' | '#')) {
        return Err(format!("{path:?} contains {bad:?}; use a plain URL path without query or fragment"));
    }
    let path = normalize_path(path);
    if path.len() > 1 && path[1..].split('/').any(|segment| matches!(segment, "" | "." | "..")) {
        return Err(format!("{path:?} has an empty, '.' or '..' segment"));
    }
    Ok(path.to_string())
}

/// A webhook trigger: holds its path on the listener from load until it is dropped, and
/// receives the path's requests while it runs.
struct WebhookSource {
    claim: Claim,
}

#[async_trait]
impl Source for WebhookSource {
    async fn run(&self, sink: EventSink, cancel: CancellationToken) -> Result<(), SourceError> {
        let _receiving = self.claim.receive(sink);
        let (trigger, path) = (self.claim.trigger(), self.claim.path());
        if self.claim.has_auth() {
            tracing::info!(%trigger, path, "webhook trigger listening");
        } else {
            tracing::warn!(%trigger, path, "webhook trigger listening without auth");
        }
        cancel.cancelled().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use chrono::Utc;
    use ktrigger_core::{Handled, SharedEvent, SourceFactory, TriggerId, TypedSource};
    use serde_json::{Value, json};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::mpsc;

    use super::*;
    use crate::listener::{ListenerOptions, PathScope};
    use hmac::{Hmac, Mac};

    struct Harness {
        listener: Arc<WebhookListener>,
        client: reqwest::Client,
        stop: CancellationToken,
        _secrets: tempfile::TempDir,
        secrets: std::path::PathBuf,
    }

    impl Harness {
        async fn start() -> Harness {
            Self::start_with(PathScope::Global).await
        }

        async fn start_with(scope: PathScope) -> Harness {
            ktrigger_core::tls::ensure_crypto_provider();
            let options = ListenerOptions {
                scope,
                max_body_bytes: 4096,
                max_buffered_bytes: 6000,
                body_timeout: Duration::from_millis(500),
                ..ListenerOptions::default()
            };
            let listener = WebhookListener::bind_with("127.0.0.1:0".parse().unwrap(), options).await.unwrap();
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
            self.build_in("ns", "svc", trigger, properties)
        }

        fn build_in(&self, namespace: &str, service: &str, trigger: &str, properties: Value) -> BuildResult {
            let id = TriggerId { namespace: namespace.into(), service: service.into(), trigger: trigger.into() };
            TypedSource::new(WebhookFactory::new(self.listener.clone()))
                .build(&properties, &BuildContext::new(id))
                .map_err(|e| e.to_string())
        }

        async fn run(&self, trigger: &str, properties: Value) -> (mpsc::Receiver<SharedEvent>, CancellationToken) {
            self.run_in("ns", "svc", trigger, properties).await
        }

        /// Runs a source and waits until it receives requests.
        async fn run_in(
            &self,
            namespace: &str,
            service: &str,
            trigger: &str,
            properties: Value,
        ) -> (mpsc::Receiver<SharedEvent>, CancellationToken) {
            self.run_built(self.build_in(namespace, service, trigger, properties).unwrap()).await
        }

        /// Runs a built source and waits until it receives requests. Each event is passed on and
        /// answered as a trigger that fired it would.
        async fn run_built(&self, source: Arc<dyn Source>) -> (mpsc::Receiver<SharedEvent>, CancellationToken) {
            let (sink, mut envelopes) = EventSink::channel(8);
            let (fired, events) = mpsc::channel(8);
            tokio::spawn(async move {
                while let Some(envelope) = envelopes.recv().await {
                    // A test that closed `events` plays a trigger that stopped: nothing answers.
                    if fired.send(envelope.event.clone()).await.is_err() {
                        break;
                    }
                    envelope.answer(Handled::Fired);
                }
            });
            let cancel = CancellationToken::new();
            let before = self.listener.receiving();
            let token = cancel.clone();
            tokio::spawn(async move { source.run(sink, token).await });
            for _ in 0..200 {
                if self.listener.receiving() > before {
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

    type BuildResult = Result<Arc<dyn Source>, String>;

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
        assert_eq!(h.listener.stats().too_large, 1);
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
    async fn triggers_share_a_path_only_with_equal_auth() {
        let h = Harness::start().await;
        let a = h.secret_file("a", "token-a");
        let b = h.secret_file("b", "token-b");
        let bearer = |file: &str| json!({"path": "/shared", "auth": {"type": "bearer", "tokenFrom": {"file": file}}});
        let (mut events_a, cancel_a) = h.run("a", bearer(&a)).await;
        let (mut events_twin, cancel_twin) = h.run("twin", bearer(&a)).await;

        let err = h.build_in("ns", "svc2", "b", bearer(&b)).err().unwrap();
        assert_eq!(
            err,
            "properties.path: /shared is already used by trigger ns/svc/a with different auth; triggers may share \
             a path only with equal auth"
        );
        let err = h.build_in("other", "svc", "open", json!({"path": "/shared"})).err().unwrap();
        assert!(err.contains("different auth"), "a route without auth cannot join a signed path: {err}");

        assert_eq!(h.post("/shared", &[("authorization", "Bearer token-a")], "{}").await.0, 202);
        assert!(events_a.try_recv().is_ok() && events_twin.try_recv().is_ok(), "equal auth: both fire");
        assert_eq!(h.post("/shared", &[("authorization", "Bearer token-b")], "{}").await.0, 401);
        assert_eq!(h.post("/shared", &[], "{}").await.0, 401);
        assert!(events_a.try_recv().is_err() && events_twin.try_recv().is_err(), "refused requests fire nothing");

        cancel_a.cancel();
        cancel_twin.cancel();
        for _ in 0..200 {
            if h.listener.receiving() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (mut events_b, _cancel_b) = h.run_in("ns", "svc2", "b", bearer(&b)).await;
        assert_eq!(h.post("/shared", &[("authorization", "Bearer token-b")], "{}").await.0, 202);
        assert!(events_b.try_recv().is_ok(), "a released path can be taken with other auth");
    }

    #[tokio::test]
    async fn the_first_trigger_of_a_trigger_service_keeps_a_path_across_applies() {
        let h = Harness::start().await;
        let key = h.secret_file("key", "k");
        let signed = json!({"path": "/p", "auth": {"type": "hmac", "secretFrom": {"file": key}}});
        let open = json!({"path": "/p"});
        // First apply: [a (signed), b (open)]: a takes the path, b is not loaded.
        let a = h.build("a", signed.clone()).unwrap();
        assert!(h.build("b", open.clone()).err().unwrap().contains("already used by trigger ns/svc/a"));
        let (_events_a, _cancel_a) = h.run_built(a).await;

        // Next apply with a removed: b is built while the old a still runs, and loads.
        let b = h.build("b", open.clone());
        assert!(b.is_ok(), "a trigger being removed does not block: {:?}", b.err());
        // Were a still in the document after b, its new build would be the one refused.
        assert!(h.build("a", signed.clone()).err().unwrap().contains("already used by trigger ns/svc/b"));

        // A trigger of another TriggerService that runs on the path still blocks.
        let err = h.build_in("ns", "other", "c", open).err().unwrap();
        assert!(err.contains("already used by trigger ns/svc/a"), "{err}");
    }

    #[tokio::test]
    async fn a_new_version_of_the_same_trigger_may_change_its_auth() {
        let h = Harness::start().await;
        let old = h.build("t", json!({"path": "/p"})).unwrap();
        let key = h.secret_file("key", "k");
        let new = h.build("t", json!({"path": "/p", "auth": {"type": "hmac", "secretFrom": {"file": key}}}));
        assert!(new.is_ok(), "{:?}", new.err());
        drop(old);
    }

    #[tokio::test]
    async fn per_trigger_service_paths_keep_tenants_apart() {
        let h = Harness::start_with(PathScope::PerTriggerService).await;
        let key = h.secret_file("key", "tenant-a-key");
        let signed = json!({"path": "/hook", "auth": {"type": "hmac", "secretFrom": {"file": key}}});
        let (mut events_a, _ca) = h.run_in("team-a", "deploys", "signed", signed).await;
        let (mut events_b, _cb) = h.run_in("team-b", "deploys", "open", json!({"path": "/hook"})).await;
        let (mut events_default, _cd) = h.run_in("team-b", "deploys", "plain", json!({})).await;
        assert_eq!(h.listener.paths(), ["/team-a/deploys/hook", "/team-b/deploys/hook", "/team-b/deploys/plain"]);

        let body = r#"{"for": "a"}"#;
        let signature = sign("tenant-a-key", body);
        let (status, _) = h.post("/team-a/deploys/hook", &[("x-signature-256", &signature)], body).await;
        assert_eq!(status, 202);
        assert_eq!(events_a.try_recv().unwrap().object["for"], "a");
        assert!(events_b.try_recv().is_err(), "a signed payload for team-a never reaches team-b");

        let (status, body_text) = h.post("/team-a/deploys/hook", &[], body).await;
        assert_eq!(status, 401, "{body_text}");
        assert_eq!(h.post("/hook", &[("x-signature-256", &signature)], body).await.0, 404, "no global path");
        assert!(events_a.try_recv().is_err() && events_b.try_recv().is_err(), "nothing fired");

        assert_eq!(h.post("/team-b/deploys/hook", &[], r#"{"for": "b"}"#).await.0, 202);
        assert_eq!(events_b.try_recv().unwrap().object["for"], "b");
        assert!(events_a.try_recv().is_err());
        assert_eq!(h.post("/team-b/deploys/plain", &[], "{}").await.0, 202);
        assert!(events_default.try_recv().is_ok(), "the default path is the trigger's name");
    }

    fn sign_with(secret: &str, content: &str, prefix: &str) -> String {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(content.as_bytes());
        format!("{prefix}{}", hex::encode(mac.finalize().into_bytes()))
    }

    #[tokio::test]
    async fn signed_timestamps_must_be_within_the_tolerance() {
        let h = Harness::start().await;
        let key = h.secret_file("key", "k");
        let auth = json!({"type": "hmac", "secretFrom": {"file": key}, "header": "X-Slack-Signature",
            "prefix": "v0=", "timestampHeader": "X-Slack-Request-Timestamp", "tolerance": "5m",
            "signedContent": "v0:{timestamp}:{body}"});
        let (mut events, _cancel) = h.run("slack", json!({"path": "/slack", "auth": auth})).await;
        let body = r#"{"text": "hi"}"#;
        let now = Utc::now().timestamp();
        let hh = &h;
        let post = |timestamp: i64, signed_timestamp: i64| {
            let signature = sign_with("k", &format!("v0:{signed_timestamp}:{body}"), "v0=");
            let timestamp = timestamp.to_string();
            async move {
                let headers = [("x-slack-signature", signature.as_str()), ("x-slack-request-timestamp", &timestamp)];
                hh.post("/slack", &headers, body).await
            }
        };

        assert_eq!(post(now, now).await.0, 202);
        assert!(events.try_recv().is_ok());
        let (status, answer) = post(now - 400, now - 400).await;
        assert_eq!(status, 401, "a replay of an old request is refused");
        assert_eq!(answer["error"], "the request timestamp is outside the allowed window");
        assert_eq!(post(now + 400, now + 400).await.0, 401, "too far in the future");
        assert_eq!(post(now, now - 400).await.0, 401, "the timestamp is signed: changing it breaks the signature");
        let signature = sign_with("k", &format!("v0:{now}:{body}"), "v0=");
        assert_eq!(h.post("/slack", &[("x-slack-signature", &signature)], body).await.0, 401, "no timestamp");
        assert!(events.try_recv().is_err(), "refused requests fire nothing");
        assert_eq!(h.listener.stats().unauthorized, 4, "refusals are counted");
    }

    #[tokio::test]
    async fn a_delivery_id_seen_within_the_window_is_answered_but_not_fired_again() {
        let h = Harness::start().await;
        let key = h.secret_file("key", "gh");
        let auth = json!({"type": "hmac", "secretFrom": {"file": key}, "header": "X-Hub-Signature-256",
            "deliveryIdHeader": "X-GitHub-Delivery"});
        let (mut events, _cancel) = h.run("github", json!({"path": "/gh", "auth": auth})).await;
        let body = r#"{"ref": "main"}"#;
        let signature = sign("gh", body);
        let hh = &h;
        let post = |id: &'static str| {
            let signature = signature.clone();
            async move { hh.post("/gh", &[("x-hub-signature-256", &signature), ("x-github-delivery", id)], body).await }
        };

        assert_eq!(post("d-1").await.0, 202);
        assert!(events.try_recv().is_ok());
        let (status, answer) = post("d-1").await;
        assert_eq!((status, answer), (200, json!({"duplicate": true})));
        assert!(events.try_recv().is_err(), "a repeated delivery is not fired again");
        assert_eq!(h.listener.stats().duplicates, 1);
        assert_eq!(post("d-2").await.0, 202);
        assert!(events.try_recv().is_ok());
        let (status, _) = h.post("/gh", &[("x-hub-signature-256", &signature)], body).await;
        assert_eq!(status, 401, "the delivery id is required once configured");

        events.close();
        assert_eq!(post("d-3").await.0, 503);
        let (status, _) = post("d-3").await;
        assert_eq!(status, 503, "an id that fired nothing is not remembered");
    }

    #[tokio::test]
    async fn a_slow_body_is_cut_by_the_body_timeout() {
        let h = Harness::start().await;
        let (mut events, _cancel) = h.run("t", json!({"path": "/slow"})).await;
        let mut stream = tokio::net::TcpStream::connect(h.listener.local_addr().unwrap()).await.unwrap();
        stream.write_all(b"POST /slow HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"a\":").await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "the server closes the connection");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(events.try_recv().is_err());
        assert_eq!(h.listener.stats().body_timeouts, 1);
    }

    #[tokio::test]
    async fn bodies_held_at_once_are_bounded_over_all_connections() {
        let h = Harness::start().await;
        let (_events, _cancel) = h.run("t", json!({"path": "/big"})).await;
        let mut stream = tokio::net::TcpStream::connect(h.listener.local_addr().unwrap()).await.unwrap();
        let head = "POST /big HTTP/1.1\r\nhost: x\r\ncontent-length: 4000\r\n\r\n";
        stream.write_all(format!("{head}\"{}", "x".repeat(3500)).as_bytes()).await.unwrap();
        let mut held = false;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let (status, _) = h.post("/big", &[], &format!("\"{}\"", "y".repeat(3000))).await;
            if status == 503 {
                held = true;
                break;
            }
        }
        assert!(held, "a second large body while 3500 bytes of the first are held is refused with 503");
        assert!(h.listener.stats().over_budget >= 1);
        drop(stream);
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
        let err = h.build("t", json!({"path": "/a/../b"})).err().unwrap();
        assert!(err.starts_with("properties.path:") && err.contains(".."), "{err}");
        let hmac = |extra: Value| {
            let mut auth = json!({"type": "hmac", "secretFrom": {"file": key}});
            auth.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            h.build("t", json!({"auth": auth})).err().unwrap_or_default()
        };
        let err = hmac(json!({"timestampHeader": "X-Timestamp", "tolerance": "2h"}));
        assert!(err.starts_with("properties.auth.tolerance:") && err.contains("3600s"), "{err}");
        let err = hmac(json!({"timestampHeader": "X-Timestamp", "tolerance": "0s"}));
        assert!(err.starts_with("properties.auth.tolerance:"), "{err}");
        let err = hmac(json!({"timestampHeader": "X-Timestamp", "signedContent": "{body}"}));
        assert!(err.starts_with("properties.auth.signedContent:") && err.contains("{timestamp}"), "{err}");
        let err = hmac(json!({"signedContent": "{timestamp}.{body}"}));
        assert!(err.starts_with("properties.auth.signedContent:"), "{err}");
        let err = hmac(json!({"signedContent": "{deliveryId}.{body}"}));
        assert!(err.contains("deliveryIdHeader"), "{err}");
        let err = hmac(json!({"deliveryIdHeader": "bad header"}));
        assert!(err.starts_with("properties.auth.deliveryIdHeader:") && !err.contains("do-not-print"), "{err}");
        assert_eq!(hmac(json!({"timestampHeader": "X-Timestamp", "deliveryIdHeader": "X-Id"})), "");
    }
}
