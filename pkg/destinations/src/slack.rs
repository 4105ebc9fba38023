//! The `slack` destination: a Block Kit message through an incoming webhook, or through the Web
//! API's `chat.postMessage` with a bot token.
//!
//! Incoming webhooks report errors with HTTP statuses; `chat.postMessage` answers HTTP 200 with
//! `{"ok": false, "error": ...}`, which is a failure too: transient for `ratelimited` and Slack's
//! own server errors, permanent otherwise. HTTP 429 is transient with `Retry-After` honoured.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use ktrigger_core::ClusterSecrets;
use ktrigger_core::DestinationType;
use ktrigger_core::PropertyError;
use ktrigger_core::{BuildContext, DeliveryError, DeliveryRequest, Destination, Receipt};
use ktrigger_core::{Secret, SecretRef};
use reqwest::Url;
use reqwest::header::HeaderValue;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http;
use crate::message::{Answer, MessageSpec, SecretUrl, Summary, as_strs, parse_url, post_json, truncate, webhook_url};

/// Default base URL of the Slack Web API.
pub const DEFAULT_API_URL: &str = "https://slack.com/api";

/// `chat.postMessage` errors that retrying can cure.
const TRANSIENT_API_ERRORS: &[&str] =
    &["ratelimited", "rate_limited", "internal_error", "service_unavailable", "request_timeout"];

/// Header blocks take at most 150 characters, section texts 3000, section fields 2000.
const HEADER_CHARS: usize = 150;
const SECTION_CHARS: usize = 3000;
const FIELD_CHARS: usize = 2000;

/// Posts a Block Kit message to Slack through an incoming webhook or chat.postMessage with a bot
/// token
#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SlackProperties {
    /// Incoming webhook URL as a literal (it is a credential: prefer webhookUrlFrom); one of
    /// webhookUrl, webhookUrlFrom or tokenFrom is required
    #[serde(default)]
    webhook_url: Option<String>,
    /// Incoming webhook URL from a secret reference {env: VAR} / {file: PATH} / {secretKeyRef:
    /// {name, key}}; never logged
    #[serde(default)]
    webhook_url_from: Option<SecretRef>,
    /// Bot token (xoxb-...) from a secret reference: posts with chat.postMessage instead of a
    /// webhook; needs channel and the chat:write scope
    #[serde(default)]
    token_from: Option<SecretRef>,
    /// Base URL of the Web API, only with tokenFrom; default `https://slack.com/api`
    #[serde(default)]
    api_url: Option<String>,
    /// Channel name or id; required with tokenFrom; with a webhook, only legacy webhooks honour it;
    /// default: the webhook's own channel
    #[serde(default)]
    channel: Option<String>,
    /// Name shown as the sender (needs chat:write.customize with tokenFrom); default: the app's
    /// name
    #[serde(default)]
    username: Option<String>,
    /// Emoji shown as the sender's icon, e.g. :rotating_light:; default: the app's icon
    #[serde(default)]
    icon_emoji: Option<String>,
    /// Template of the message text (Slack mrkdwn) over object, oldObject, event, context, now;
    /// replaces the default message (summary, object, namespace, trigger, event, time)
    #[serde(default)]
    message: Option<String>,
}

/// Builds `slack` destinations.
#[derive(Clone, Default)]
pub struct SlackFactory {
    client: Option<reqwest::Client>,
}

impl SlackFactory {
    /// Destinations that use the process-wide [`http::shared_client`].
    pub fn new() -> Self {
        SlackFactory { client: None }
    }

    /// Destinations that use `client` (e.g. one with its own timeout).
    pub fn with_client(client: reqwest::Client) -> Self {
        SlackFactory { client: Some(client) }
    }
}

impl DestinationType for SlackFactory {
    type Properties = SlackProperties;
    const NAME: &'static str = "slack";
    const EXAMPLE: &'static str = r##"type: slack
properties:
  webhookUrlFrom: {env: SLACK_WEBHOOK_URL}
  channel: "#alerts"
  iconEmoji: ":rotating_light:"
"##;

    fn build(&self, props: SlackProperties, context: &BuildContext) -> Result<Arc<dyn Destination>, PropertyError> {
        let client = http::client_or_shared(self.client.as_ref())?;
        Ok(Arc::new(Slack::new(props, &context.secrets, client)?))
    }
}

/// Where messages go.
enum Endpoint {
    /// An incoming webhook.
    Webhook(SecretUrl),
    /// `chat.postMessage` at `url` with a bot token.
    Api { url: Url, token: Secret },
}

/// A built `slack` destination.
struct Slack {
    endpoint: Endpoint,
    channel: Option<String>,
    username: Option<String>,
    icon_emoji: Option<String>,
    message: MessageSpec,
    client: reqwest::Client,
    redactions: Vec<String>,
}

impl Slack {
    fn new(props: SlackProperties, secrets: &ClusterSecrets, client: reqwest::Client) -> Result<Self, PropertyError> {
        let message = MessageSpec::new(None, props.message.as_deref())?;
        for (value, property) in
            [(&props.channel, "channel"), (&props.username, "username"), (&props.icon_emoji, "iconEmoji")]
        {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return Err(PropertyError::new(property, "must not be empty"));
            }
        }
        let has_webhook = props.webhook_url.is_some() || props.webhook_url_from.is_some();
        let (endpoint, redactions) = match &props.token_from {
            Some(reference) => {
                if has_webhook {
                    return Err(PropertyError::new(
                        "tokenFrom",
                        "give either a webhook (webhookUrl or webhookUrlFrom) or \
                                tokenFrom, not both",
                    ));
                }
                if props.channel.is_none() {
                    return Err(PropertyError::new("channel", "required with tokenFrom"));
                }
                let base = props.api_url.as_deref().unwrap_or(DEFAULT_API_URL);
                let mut base = parse_url(base, "apiUrl")?;
                if !base.path().ends_with('/') {
                    base.set_path(&format!("{}/", base.path()));
                }
                let url = base.join("chat.postMessage").map_err(|e| PropertyError::new("apiUrl", e))?;
                let token = reference.resolve(secrets, "tokenFrom")?;
                if HeaderValue::from_str(&format!("Bearer {}", token.expose())).is_err() {
                    return Err(PropertyError::new("tokenFrom", "the secret's value is not a valid header value"));
                }
                let redactions = vec![token.expose().to_string()];
                (Endpoint::Api { url, token }, redactions)
            }
            None => {
                if props.api_url.is_some() {
                    return Err(PropertyError::new("apiUrl", "only applies with tokenFrom"));
                }
                if !has_webhook {
                    return Err(PropertyError::new(
                        "webhookUrl",
                        "required (or webhookUrlFrom, or tokenFrom with channel)",
                    ));
                }
                let url = webhook_url(props.webhook_url.as_deref(), props.webhook_url_from.as_ref(), secrets)?;
                let redactions = url.fragments();
                (Endpoint::Webhook(url), redactions)
            }
        };
        Ok(Slack {
            endpoint,
            channel: props.channel,
            username: props.username,
            icon_emoji: props.icon_emoji,
            message,
            client,
            redactions,
        })
    }

    /// The JSON body sent for `request`.
    fn payload(&self, request: &DeliveryRequest<'_>) -> Result<Value, DeliveryError> {
        let message = self.message.compose(request)?;
        let mut payload = match &message.custom {
            Some(text) => json!({"text": text}),
            None => json!({
                "text": escape(&message.summary.headline),
                "blocks": blocks(&message.summary),
            }),
        };
        for (key, value) in [("channel", &self.channel), ("username", &self.username), ("icon_emoji", &self.icon_emoji)]
        {
            if let Some(value) = value {
                payload[key] = json!(value);
            }
        }
        Ok(payload)
    }
}

/// The Block Kit blocks of a default message: header, detail, facts, time.
fn blocks(summary: &Summary) -> Value {
    let mut blocks = vec![json!({
        "type": "header",
        "text": {"type": "plain_text", "text": truncate(&summary.headline, HEADER_CHARS), "emoji": true},
    })];
    if let Some(detail) = &summary.detail {
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": truncate(&escape(detail), SECTION_CHARS)},
        }));
    }
    let fields: Vec<Value> = summary
        .facts
        .iter()
        .map(|fact| {
            json!({"type": "mrkdwn", "text": truncate(&format!("*{}*\n{}", fact.label, escape(&fact.value)), FIELD_CHARS)})
        })
        .collect();
    blocks.push(json!({"type": "section", "fields": fields}));
    // Slack shows the date in each reader's time zone, and the fallback where it cannot.
    let date =
        format!("<!date^{}^{{date_short_pretty}} at {{time_secs}}|{}>", summary.time.timestamp(), summary.time_text());
    blocks.push(json!({
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": format!("{date} · sent by ktrigger")}],
    }));
    Value::Array(blocks)
}

/// Escapes the three characters Slack's mrkdwn gives a meaning to: `&`, `<` and `>`.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Reads a `chat.postMessage` answer: `ok: true` is delivered, `ok: false` a failure.
fn api_outcome(answer: &Answer) -> Result<Receipt, DeliveryError> {
    let Some(body) = answer.json() else {
        return Err(answer.unexpected("Slack"));
    };
    match body.get("ok").and_then(Value::as_bool) {
        Some(true) => Ok(answer.receipt(body.get("ts").and_then(Value::as_str).map(|ts| format!("ts {ts}")))),
        Some(false) => {
            let error = body.get("error").and_then(Value::as_str).unwrap_or("unknown error");
            Err(answer.refused("Slack", error, TRANSIENT_API_ERRORS.contains(&error)))
        }
        None => Err(answer.unexpected("Slack")),
    }
}

impl fmt::Debug for Slack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Slack");
        match &self.endpoint {
            Endpoint::Webhook(url) => debug.field("webhook", url),
            Endpoint::Api { url, token } => debug.field("api", &url.as_str()).field("token", token),
        };
        debug
            .field("channel", &self.channel)
            .field("username", &self.username)
            .field("icon_emoji", &self.icon_emoji)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Destination for Slack {
    fn render(&self, request: &DeliveryRequest<'_>) -> Result<Value, DeliveryError> {
        self.payload(request)
    }

    async fn deliver(&self, request: &DeliveryRequest<'_>) -> Result<Receipt, DeliveryError> {
        let payload = self.payload(request)?;
        let outcome = match &self.endpoint {
            Endpoint::Webhook(url) => {
                post_json(self.client.post(url.expose().clone()), &payload).await.map(|answer| answer.receipt(None))
            }
            Endpoint::Api { url, token } => {
                match post_json(self.client.post(url.clone()).bearer_auth(token.expose()), &payload).await {
                    Ok(answer) => api_outcome(&answer),
                    Err(error) => Err(error),
                }
            }
        };
        outcome.map_err(|e| http::redact(e, &as_strs(&self.redactions)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use ktrigger_core::Event;

    use super::*;
    use crate::message::testing::*;
    use ktrigger_core::{DestinationFactory, TypedDestination, parse_properties};

    const HOOK_PATH: &str = "/services/T0001/B0002/hooksecret0123456789abcd";
    const TOKEN: &str = "xoxb-test-0123456789";

    /// Answers like Slack: incoming webhooks with statuses, chat.postMessage with `ok`.
    async fn slack() -> Receiver {
        Receiver::start(|request| {
            if request.path == "/api/chat.postMessage" {
                if request.header("authorization") != Some(&format!("Bearer {TOKEN}")) {
                    return axum::Json(json!({"ok": false, "error": "invalid_auth"})).into_response();
                }
                return match request.json()["channel"].as_str() {
                    Some("#busy") => axum::Json(json!({"ok": false, "error": "ratelimited"})).into_response(),
                    Some("#flood") => (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "30")]).into_response(),
                    Some("#archived") => axum::Json(json!({"ok": false, "error": "is_archived"})).into_response(),
                    Some(channel) => {
                        axum::Json(json!({"ok": true, "channel": channel, "ts": "1700000000.000100"})).into_response()
                    }
                    None => axum::Json(json!({"ok": false, "error": "channel_not_found"})).into_response(),
                };
            }
            match request.path.as_str() {
                path if path.ends_with("/busy") => {
                    (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "12")], "rate limited").into_response()
                }
                // Echoes the path it was called on, secret part included.
                path if path.contains("echo") => {
                    (StatusCode::BAD_REQUEST, format!("invalid_payload at {path}")).into_response()
                }
                HOOK_PATH => "ok".into_response(),
                _ => (StatusCode::NOT_FOUND, "no_service").into_response(),
            }
        })
        .await
    }

    fn build(properties: Value) -> Arc<dyn Destination> {
        TypedDestination::new(SlackFactory::new()).build(&properties, &context()).map_err(|e| e.to_string()).unwrap()
    }

    fn build_err(properties: Value) -> String {
        TypedDestination::new(SlackFactory::new())
            .build(&properties, &context())
            .map_err(|e| e.to_string())
            .err()
            .expect("the properties should be refused")
    }

    fn token_file(dir: &tempfile::TempDir, token: &str) -> String {
        secret_file(dir, "token", token)
    }

    #[tokio::test]
    async fn webhook_posts_the_default_message_in_block_kit() {
        let receiver = slack().await;
        let destination = build(json!({
            "webhookUrl": receiver.url(HOOK_PATH),
            "channel": "#alerts",
            "username": "ktrigger",
            "iconEmoji": ":rotating_light:",
        }));
        let event = k8s_event();
        let receipt = deliver(destination.as_ref(), &event).await.unwrap();
        assert_eq!(receipt.detail.as_deref(), Some("HTTP 200"));

        let request = receiver.only_request();
        assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", HOOK_PATH));
        assert_eq!(request.header("content-type"), Some("application/json"));
        let sent = request.json();
        assert_eq!(sent["text"], "pod-restart: Pod web-7d9f");
        assert_eq!(sent["channel"], "#alerts");
        assert_eq!(sent["username"], "ktrigger");
        assert_eq!(sent["icon_emoji"], ":rotating_light:");
        let blocks = sent["blocks"].as_array().unwrap();
        assert_eq!(blocks.len(), 4, "{sent:#}");
        assert_eq!(
            blocks[0],
            json!({"type": "header", "text": {"type": "plain_text", "text": "pod-restart: Pod web-7d9f", "emoji": true}})
        );
        assert_eq!(blocks[1]["text"]["text"], "BackOff (x5): Back-off restarting failed container web");
        let fields: Vec<&str> =
            blocks[2]["fields"].as_array().unwrap().iter().map(|f| f["text"].as_str().unwrap()).collect();
        assert_eq!(
            fields,
            [
                "*Object*\nPod web-7d9f",
                "*Namespace*\napps",
                "*Trigger*\napps/restarts/crashloop",
                "*Event*\nupdate from k8s-events (preset pod-restart)",
            ]
        );
        assert_eq!(blocks[3]["type"], "context");
        let time = blocks[3]["elements"][0]["text"].as_str().unwrap();
        assert!(
            time.starts_with(&format!(
                "<!date^{}^{{date_short_pretty}} at {{time_secs}}|",
                event.meta.time.timestamp()
            )),
            "{time}"
        );
        assert!(time.contains(&event.meta.time.format("%Y-%m-%d %H:%M:%S UTC").to_string()), "{time}");

        // The dry-run rendering is exactly what was sent.
        assert_eq!(render(destination.as_ref(), &event), sent);
    }

    #[tokio::test]
    async fn default_messages_escape_mrkdwn() {
        let destination = build(json!({"webhookUrl": "https://hooks.slack.com/services/T/B/x"}));
        let event = Event::new("webhook", "receive", json!({"kind": "Build", "metadata": {"name": "a<b>&c"}}));
        let sent = render(destination.as_ref(), &event);
        assert_eq!(sent["text"], "receive: Build a&lt;b&gt;&amp;c");
        assert_eq!(sent["blocks"][0]["text"]["text"], "receive: Build a<b>&c", "plain_text is not escaped");
        assert_eq!(sent["blocks"][1]["fields"][0]["text"], "*Object*\nBuild a&lt;b&gt;&amp;c");
        assert!(sent.get("channel").is_none());
    }

    #[tokio::test]
    async fn a_custom_message_replaces_the_default_text() {
        let receiver = slack().await;
        let destination = build(json!({
            "webhookUrl": receiver.url(HOOK_PATH),
            "message": "*{{ object.involvedObject.name }}* restarted {{ object.count }} times ({{ event.preset }})",
        }));
        deliver(destination.as_ref(), &k8s_event()).await.unwrap();
        assert_eq!(receiver.only_request().json(), json!({"text": "*web-7d9f* restarted 5 times (pod-restart)"}));
    }

    #[tokio::test]
    async fn bot_tokens_post_with_chat_post_message() {
        let receiver = slack().await;
        let dir = tempfile::tempdir().unwrap();
        let destination = build(json!({
            "tokenFrom": {"file": token_file(&dir, TOKEN)},
            "channel": "#alerts",
            "apiUrl": receiver.url("/api"),
        }));
        let receipt = deliver(destination.as_ref(), &k8s_event()).await.unwrap();
        assert_eq!(receipt.detail.as_deref(), Some("HTTP 200, ts 1700000000.000100"));
        let request = receiver.only_request();
        assert_eq!(request.path, "/api/chat.postMessage");
        assert_eq!(request.header("authorization"), Some(format!("Bearer {TOKEN}").as_str()));
        assert!(request.header("content-type").unwrap().starts_with("application/json"));
        let sent = request.json();
        assert_eq!(sent["channel"], "#alerts");
        assert_eq!(sent["blocks"][0]["type"], "header");
        assert!(!render(destination.as_ref(), &k8s_event()).to_string().contains(TOKEN));
    }

    #[tokio::test]
    async fn api_errors_in_ok_false_answers_are_failures() {
        let receiver = slack().await;
        let dir = tempfile::tempdir().unwrap();
        let api = receiver.url("/api");
        let with = |token: &str, channel: &str| {
            let file = secret_file(&dir, &format!("token-{channel}"), token);
            build(json!({"tokenFrom": {"file": file}, "channel": channel, "apiUrl": api}))
        };
        let event = k8s_event();

        let error = deliver(with("xoxb-wrong-token-value", "#alerts").as_ref(), &event).await.unwrap_err();
        assert_eq!(error, DeliveryError::permanent("Slack refused the message: invalid_auth"));

        let error = deliver(with(TOKEN, "#archived").as_ref(), &event).await.unwrap_err();
        assert_eq!(error, DeliveryError::permanent("Slack refused the message: is_archived"));

        let error = deliver(with(TOKEN, "#busy").as_ref(), &event).await.unwrap_err();
        assert_eq!(
            error,
            DeliveryError::Transient {
                reason: "Slack refused the message: ratelimited (rate limited)".into(),
                retry_after: None
            }
        );

        let error = deliver(with(TOKEN, "#flood").as_ref(), &event).await.unwrap_err();
        assert!(
            matches!(&error, DeliveryError::Transient { retry_after: Some(after), .. } if *after == Duration::from_secs(30)),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn webhook_statuses_are_classified_and_urls_never_shown() {
        let receiver = slack().await;
        let event = k8s_event();

        let busy = build(json!({"webhookUrl": receiver.url("/services/T0001/B0002/busy")}));
        let error = deliver(busy.as_ref(), &event).await.unwrap_err();
        assert_eq!(
            error,
            DeliveryError::Transient {
                reason: "HTTP 429 Too Many Requests: rate limited".into(),
                retry_after: Some(Duration::from_secs(12))
            }
        );

        let secret = "echosecret0123456789abcdef";
        let echo = build(json!({"webhookUrl": receiver.url(&format!("/services/T0001/B0002/{secret}"))}));
        let error = deliver(echo.as_ref(), &event).await.unwrap_err();
        assert!(matches!(error, DeliveryError::Permanent { .. }), "{error:?}");
        assert!(!error.to_string().contains(secret), "{error}");
        assert!(error.to_string().contains("<redacted>"), "{error}");

        let missing = build(json!({"webhookUrl": receiver.url("/services/T0001/B0002/unknownsecret0123")}));
        let error = deliver(missing.as_ref(), &event).await.unwrap_err();
        assert_eq!(error, DeliveryError::permanent("HTTP 404 Not Found: no_service"));

        // Nothing listens on a port just released: transient, and the URL is not named.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let closed = build(json!({"webhookUrl": format!("http://127.0.0.1:{port}/services/T/B/closedsecret0123")}));
        let error = deliver(closed.as_ref(), &event).await.unwrap_err();
        assert!(matches!(error, DeliveryError::Transient { .. }), "{error:?}");
        assert!(!error.to_string().contains("closedsecret0123"), "{error}");
    }

    #[test]
    fn debug_and_render_never_show_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let secret = "https://hooks.slack.com/services/T0001/B0002/debugsecret0123456789";
        let props = parse_properties(&json!({"webhookUrlFrom": {"file": secret_file(&dir, "url", secret)}})).unwrap();
        let slack = Slack::new(props, &ClusterSecrets::default(), http::shared_client().unwrap()).unwrap();
        let debug = format!("{slack:?}");
        assert!(debug.contains("webhook: <redacted>") && !debug.contains("debugsecret"), "{debug}");
        assert!(!render(&slack, &k8s_event()).to_string().contains("debugsecret"));

        let props = parse_properties(&json!({"webhookUrl": secret})).unwrap();
        let slack = Slack::new(props, &ClusterSecrets::default(), http::shared_client().unwrap()).unwrap();
        assert!(!format!("{slack:?}").contains("debugsecret"));

        let props =
            parse_properties(&json!({"tokenFrom": {"file": token_file(&dir, TOKEN)}, "channel": "C1"})).unwrap();
        let slack = Slack::new(props, &ClusterSecrets::default(), http::shared_client().unwrap()).unwrap();
        let debug = format!("{slack:?}");
        assert!(debug.contains("https://slack.com/api/chat.postMessage") && !debug.contains(TOKEN), "{debug}");
    }

    #[test]
    fn invalid_properties_are_refused_with_the_property_named() {
        let err = build_err(json!({"webhookURL": "https://hooks.slack.com/services/T/B/x"}));
        assert!(err.starts_with("properties.webhookURL: unknown field `webhookURL`"), "{err}");
        let err = build_err(json!({}));
        assert!(err.starts_with("properties.webhookUrl: required"), "{err}");
        let err = build_err(json!({"webhookUrl": "https://h/x", "webhookUrlFrom": {"env": "X"}}));
        assert!(err.starts_with("properties.webhookUrlFrom: give either"), "{err}");
        let err = build_err(json!({"tokenFrom": {"env": "X"}}));
        assert_eq!(err, "properties.channel: required with tokenFrom");
        let err = build_err(json!({"tokenFrom": {"env": "X"}, "webhookUrl": "https://h/x", "channel": "c"}));
        assert!(err.starts_with("properties.tokenFrom: give either"), "{err}");
        let err = build_err(json!({"webhookUrl": "https://h/x", "apiUrl": "https://slack.com/api"}));
        assert_eq!(err, "properties.apiUrl: only applies with tokenFrom");
        let err = build_err(json!({"webhookUrl": "https://h/x", "message": "{{ pod.name }}"}));
        assert!(err.starts_with("properties.message: unknown variable(s) pod"), "{err}");
        let err = build_err(json!({"webhookUrl": "https://h/x", "channel": " "}));
        assert_eq!(err, "properties.channel: must not be empty");
        let err = build_err(json!({"webhookUrl": "https://h/x", "iconEmoji": 3}));
        assert!(err.starts_with("properties.iconEmoji: invalid type"), "{err}");
        let err = build_err(json!({"webhookUrlFrom": {"env": "KTRIGGER_TEST_SLACK_UNSET"}}));
        assert_eq!(err, "properties.webhookUrlFrom: environment variable KTRIGGER_TEST_SLACK_UNSET is not set");
        let err = build_err(json!({"tokenFrom": {"secretKeyRef": {"name": "slack", "key": "token"}}, "channel": "c"}));
        assert!(err.starts_with("properties.tokenFrom: secretKeyRef slack/token: no cluster to read it from"), "{err}");
    }
}
