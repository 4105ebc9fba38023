//! The `lark` destination: a Feishu/Lark custom bot (`/open-apis/bot/v2/hook/...`), an
//! interactive card or a text message, optionally signed.
//!
//! Signing, as Lark documents it: `timestamp` is the current time in seconds (a string),
//! `string_to_sign = timestamp + "\n" + secret`, and
//! `sign = base64(HMAC-SHA256(key = string_to_sign, message = ""))` (the key and message are the
//! other way round from DingTalk); both go in the JSON body. Lark refuses timestamps more than an
//! hour off.
//!
//! Lark answers HTTP 200 with `{"code": 0, "msg": "success"}` (older bots: `StatusCode`); any
//! other code is a failure, transient for its rate-limit code, permanent otherwise.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use ktrigger_core::ClusterSecrets;
use ktrigger_core::DestinationType;
use ktrigger_core::PropertyError;
use ktrigger_core::{BuildContext, DeliveryError, DeliveryRequest, Destination, Receipt};
use ktrigger_core::{Secret, SecretRef};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::http;
use crate::message::{Answer, Message, MessageSpec, SecretUrl, as_strs, code_of, post_json, webhook_url};

/// Lark's code for a bot sending too often (100 messages a minute, 5 a second).
const RATE_LIMITED_CODE: i64 = 11232;

/// Sends an interactive card or a text message through a Feishu/Lark custom bot, signed when a
/// secret is given
#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LarkProperties {
    /// Bot webhook URL `https://open.feishu.cn/open-apis/bot/v2/hook/...` (or open.larksuite.com) as
    /// a literal (it is a credential: prefer webhookUrlFrom); exactly one of webhookUrl and
    /// webhookUrlFrom is required
    #[serde(default)]
    webhook_url: Option<String>,
    /// Bot webhook URL from a secret reference {env: VAR} / {file: PATH} / {secretKeyRef: {name,
    /// key}}; never logged
    #[serde(default)]
    webhook_url_from: Option<SecretRef>,
    /// The bot's signature secret from a secret reference; when given, every request carries
    /// timestamp and sign in its body; default: unsigned
    #[serde(default)]
    secret_from: Option<SecretRef>,
    /// `interactive` (default): a card with a header, the facts and the time; `text`: plain text
    #[serde(default)]
    msg_type: MsgType,
    /// Template of the card's header (first line of text messages); default: what happened to which
    /// object, e.g. `pod-restart: Pod web`
    #[serde(default)]
    title: Option<String>,
    /// Template of the text (lark_md in cards) over object, oldObject, event, context, now;
    /// replaces the default text (object, namespace, trigger, event, time). Include the bot's
    /// keyword here if it uses keyword security
    #[serde(default)]
    message: Option<String>,
}

/// The kind of message sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum MsgType {
    #[default]
    Interactive,
    Text,
}

/// Builds `lark` destinations.
#[derive(Clone, Default)]
pub struct LarkFactory {
    client: Option<reqwest::Client>,
}

impl LarkFactory {
    /// Destinations that use the process-wide [`http::shared_client`].
    pub fn new() -> Self {
        LarkFactory { client: None }
    }

    /// Destinations that use `client` (e.g. one with its own timeout).
    pub fn with_client(client: reqwest::Client) -> Self {
        LarkFactory { client: Some(client) }
    }
}

impl DestinationType for LarkFactory {
    type Properties = LarkProperties;
    const NAME: &'static str = "lark";
    const ALIASES: &'static [&'static str] = &["feishu"];
    const EXAMPLE: &'static str = r#"type: lark
properties:
  webhookUrlFrom: {env: LARK_WEBHOOK_URL}
  secretFrom: {env: LARK_SECRET}
  msgType: interactive
"#;

    fn build(&self, props: LarkProperties, context: &BuildContext) -> Result<Arc<dyn Destination>, PropertyError> {
        let client = http::client_or_shared(self.client.as_ref())?;
        Ok(Arc::new(Lark::new(props, &context.secrets, client)?))
    }
}

/// A built `lark` destination.
struct Lark {
    url: SecretUrl,
    secret: Option<Secret>,
    msg_type: MsgType,
    message: MessageSpec,
    client: reqwest::Client,
    redactions: Vec<String>,
    /// The clock of signatures (tests move it).
    clock: fn() -> DateTime<Utc>,
}

impl Lark {
    fn new(props: LarkProperties, secrets: &ClusterSecrets, client: reqwest::Client) -> Result<Self, PropertyError> {
        let message = MessageSpec::new(props.title.as_deref(), props.message.as_deref())?;
        let url = webhook_url(props.webhook_url.as_deref(), props.webhook_url_from.as_ref(), secrets)?;
        let mut redactions = url.fragments();
        let secret =
            props.secret_from.as_ref().map(|reference| reference.resolve(secrets, "secretFrom")).transpose()?;
        if let Some(secret) = &secret {
            redactions.push(secret.expose().to_string());
        }
        Ok(Lark { url, secret, msg_type: props.msg_type, message, client, redactions, clock: Utc::now })
    }

    /// The JSON body for `request`, without the signature.
    fn payload(&self, request: &DeliveryRequest<'_>) -> Result<Value, DeliveryError> {
        let message = self.message.compose(request)?;
        Ok(match self.msg_type {
            MsgType::Interactive => json!({"msg_type": "interactive", "card": card(&message)}),
            MsgType::Text => {
                let text = match &message.custom {
                    Some(custom) if message.custom_title => format!("{}\n{custom}", message.title),
                    Some(custom) => custom.clone(),
                    None if message.custom_title => format!("{}\n{}", message.title, message.summary.plain_text()),
                    None => message.summary.plain_text(),
                };
                json!({"msg_type": "text", "content": {"text": text}})
            }
        })
    }
}

/// The interactive card: a header, then the custom text, or the detail, the facts and the time.
fn card(message: &Message) -> Value {
    let summary = &message.summary;
    let mut elements = Vec::new();
    match &message.custom {
        Some(text) => elements.push(json!({"tag": "div", "text": {"tag": "lark_md", "content": text}})),
        None => {
            if let Some(detail) = &summary.detail {
                elements.push(json!({"tag": "div", "text": {"tag": "plain_text", "content": detail}}));
            }
            let fields: Vec<Value> = summary
                .facts
                .iter()
                .map(|fact| {
                    json!({"is_short": true, "text": {"tag": "lark_md", "content": format!("**{}**\n{}", fact.label, fact.value)}})
                })
                .collect();
            elements.push(json!({"tag": "div", "fields": fields}));
            elements.push(json!({
                "tag": "note",
                "elements": [{"tag": "plain_text", "content": format!("{} · sent by ktrigger", summary.time_text())}],
            }));
        }
    }
    json!({
        "config": {"wide_screen_mode": true},
        "header": {"title": {"tag": "plain_text", "content": message.title}, "template": "blue"},
        "elements": elements,
    })
}

/// `base64(HMAC-SHA256(key = timestamp + "\n" + secret, message = ""))`.
pub fn sign(timestamp_seconds: i64, secret: &str) -> String {
    let string_to_sign = format!("{timestamp_seconds}\n{secret}");
    let mac = Hmac::<Sha256>::new_from_slice(string_to_sign.as_bytes()).expect("HMAC accepts keys of any length");
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Reads a 2xx answer: `code` (or `StatusCode`) 0 is delivered, any other code a failure.
fn outcome(answer: &Answer) -> Result<Receipt, DeliveryError> {
    let Some(body) = answer.json() else {
        return Err(answer.unexpected("Lark"));
    };
    match code_of(&body, "code").or_else(|| code_of(&body, "StatusCode")) {
        Some(0) => Ok(answer.receipt(None)),
        Some(code) => {
            let message = ["msg", "StatusMessage"].iter().find_map(|key| body.get(key)?.as_str()).unwrap_or("");
            Err(answer.refused("Lark", &format!("code {code}: {message}"), code == RATE_LIMITED_CODE))
        }
        None => Err(answer.unexpected("Lark")),
    }
}

impl fmt::Debug for Lark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lark")
            .field("url", &self.url)
            .field("secret", &self.secret)
            .field("msg_type", &self.msg_type)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Destination for Lark {
    fn render(&self, request: &DeliveryRequest<'_>) -> Result<Value, DeliveryError> {
        let mut payload = self.payload(request)?;
        if self.secret.is_some() {
            payload["timestamp"] = json!((self.clock)().timestamp().to_string());
            payload["sign"] = json!("<redacted>");
        }
        Ok(payload)
    }

    async fn deliver(&self, request: &DeliveryRequest<'_>) -> Result<Receipt, DeliveryError> {
        let mut payload = self.payload(request)?;
        if let Some(secret) = &self.secret {
            let timestamp = (self.clock)().timestamp();
            payload["timestamp"] = json!(timestamp.to_string());
            payload["sign"] = json!(sign(timestamp, secret.expose()));
        }
        let outcome = match post_json(self.client.post(self.url.expose().clone()), &payload).await {
            Ok(answer) => outcome(&answer),
            Err(error) => Err(error),
        };
        outcome.map_err(|e| http::redact(e, &as_strs(&self.redactions)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::StatusCode;
    use axum::response::IntoResponse;

    use super::*;
    use crate::message::testing::*;
    use ktrigger_core::{DestinationFactory, TypedDestination, parse_properties};

    const HOOK_PATH: &str = "/open-apis/bot/v2/hook/2f6b8c1e-0d4a-4f1b-9c3e-larkhooksecret";
    const SECRET: &str = "larksigningsecret0123456789";

    /// Answers like a Lark custom bot: HTTP 200 with a code. With a `secret`, the body must carry
    /// `timestamp` (seconds, within an hour) and `sign`, recomputed here from the formula.
    async fn lark(secret: Option<&'static str>) -> Receiver {
        Receiver::start(move |request| {
            let reply =
                |code: i64, msg: &str| axum::Json(json!({"code": code, "msg": msg, "data": {}})).into_response();
            if request.path == "/busy" {
                return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "3")]).into_response();
            }
            if request.path == "/legacy" {
                return axum::Json(json!({"Extra": null, "StatusCode": 0, "StatusMessage": "success"})).into_response();
            }
            if request.path != HOOK_PATH {
                // Echoes the path it was called on, secret part included.
                return reply(
                    19001,
                    &format!("param invalid: incoming webhook access token invalid: {}", request.path),
                );
            }
            let body = request.json();
            if let Some(secret) = secret {
                let (Some(timestamp), Some(sign)) = (body["timestamp"].as_str(), body["sign"].as_str()) else {
                    return reply(19021, "sign match fail or timestamp is not within one hour from current time");
                };
                let fresh = timestamp.parse::<i64>().is_ok_and(|t| (Utc::now().timestamp() - t).abs() <= 3600);
                let expected = hmac_sha256_base64(format!("{timestamp}\n{secret}").as_bytes(), b"");
                if !fresh || sign != expected {
                    return reply(19021, "sign match fail or timestamp is not within one hour from current time");
                }
            }
            if body.to_string().contains("flood") {
                return reply(11232, "frequency limited psm[lark.oapi.app_platform_runtime]appID[1]");
            }
            if body["msg_type"] == "interactive" && body["card"]["elements"].as_array().is_none_or(Vec::is_empty) {
                return reply(9499, "Bad Request");
            }
            reply(0, "success")
        })
        .await
    }

    fn build(properties: Value) -> Arc<dyn Destination> {
        TypedDestination::new(LarkFactory::new()).build(&properties, &context()).map_err(|e| e.to_string()).unwrap()
    }

    fn build_err(properties: Value) -> String {
        TypedDestination::new(LarkFactory::new())
            .build(&properties, &context())
            .map_err(|e| e.to_string())
            .err()
            .expect("the properties should be refused")
    }

    fn concrete(properties: Value) -> Lark {
        Lark::new(parse_properties(&properties).unwrap(), &ClusterSecrets::default(), http::shared_client().unwrap())
            .unwrap()
    }

    #[tokio::test]
    async fn sends_the_default_message_as_an_interactive_card() {
        let receiver = lark(None).await;
        let destination = build(json!({"webhookUrl": receiver.url(HOOK_PATH)}));
        let event = k8s_event();
        let receipt = deliver(destination.as_ref(), &event).await.unwrap();
        assert_eq!(receipt.detail.as_deref(), Some("HTTP 200"));

        let request = receiver.only_request();
        assert_eq!(request.header("content-type"), Some("application/json"));
        let sent = request.json();
        assert_eq!(sent["msg_type"], "interactive");
        assert!(sent.get("sign").is_none() && sent.get("timestamp").is_none(), "unsigned without secretFrom");
        let card = &sent["card"];
        assert_eq!(card["header"]["title"], json!({"tag": "plain_text", "content": "pod-restart: Pod web-7d9f"}));
        let elements = card["elements"].as_array().unwrap();
        assert_eq!(elements[0]["text"]["content"], "BackOff (x5): Back-off restarting failed container web");
        let fields: Vec<&str> =
            elements[1]["fields"].as_array().unwrap().iter().map(|f| f["text"]["content"].as_str().unwrap()).collect();
        assert_eq!(
            fields,
            [
                "**Object**\nPod web-7d9f",
                "**Namespace**\napps",
                "**Trigger**\napps/restarts/crashloop",
                "**Event**\nupdate from k8s-events (preset pod-restart)",
            ]
        );
        let note = elements[2]["elements"][0]["content"].as_str().unwrap();
        assert!(note.starts_with(&event.meta.time.format("%Y-%m-%d %H:%M:%S UTC").to_string()), "{note}");
        assert_eq!(render(destination.as_ref(), &event), sent);
    }

    #[tokio::test]
    async fn signed_requests_pass_the_vendor_check() {
        let receiver = lark(Some(SECRET)).await;
        let dir = tempfile::tempdir().unwrap();
        let destination = build(json!({
            "webhookUrlFrom": {"file": secret_file(&dir, "url", &receiver.url(HOOK_PATH))},
            "secretFrom": {"file": secret_file(&dir, "secret", SECRET)},
            "msgType": "text",
        }));
        let before = Utc::now().timestamp();
        deliver(destination.as_ref(), &k8s_event()).await.unwrap();
        let sent = receiver.only_request().json();
        let timestamp: i64 = sent["timestamp"].as_str().expect("a string").parse().unwrap();
        assert!(timestamp >= before && timestamp <= Utc::now().timestamp(), "seconds: {timestamp}");
        assert_eq!(sent["msg_type"], "text");

        // A dry run shows the payload with the signature hidden.
        let rendered = render(destination.as_ref(), &k8s_event());
        assert_eq!(rendered["sign"], "<redacted>");
        assert!(rendered["timestamp"].is_string());
    }

    #[tokio::test]
    async fn a_wrong_secret_or_a_stale_timestamp_is_a_permanent_failure() {
        let receiver = lark(Some(SECRET)).await;
        let dir = tempfile::tempdir().unwrap();
        let refused = DeliveryError::permanent(
            "Lark refused the message: code 19021: sign match fail or timestamp is not within one hour from current time",
        );
        let wrong = build(json!({
            "webhookUrl": receiver.url(HOOK_PATH),
            "secretFrom": {"file": secret_file(&dir, "wrong", "notthelarksecret0123")},
        }));
        assert_eq!(deliver(wrong.as_ref(), &k8s_event()).await.unwrap_err(), refused);

        // DingTalk's formula (secret as the key) does not pass Lark's check.
        let timestamp = Utc::now().timestamp();
        assert_ne!(sign(timestamp, SECRET), crate::dingtalk::sign(timestamp, SECRET));

        let mut stale = concrete(json!({
            "webhookUrl": receiver.url(HOOK_PATH),
            "secretFrom": {"file": secret_file(&dir, "right", SECRET)},
        }));
        stale.clock = || Utc::now() - chrono::Duration::minutes(61);
        assert_eq!(deliver(&stale, &k8s_event()).await.unwrap_err(), refused);
        stale.clock = || Utc::now() - chrono::Duration::minutes(59);
        deliver(&stale, &k8s_event()).await.unwrap();
    }

    #[tokio::test]
    async fn text_messages_and_custom_templates() {
        let receiver = lark(None).await;
        let destination = build(json!({
            "webhookUrl": receiver.url(HOOK_PATH),
            "msgType": "text",
            "message": "{{ object.involvedObject.name }} restarted {{ object.count }} times",
        }));
        deliver(destination.as_ref(), &k8s_event()).await.unwrap();
        assert_eq!(
            receiver.only_request().json(),
            json!({"msg_type": "text", "content": {"text": "web-7d9f restarted 5 times"}})
        );

        let destination = build(json!({
            "webhookUrl": receiver.url(HOOK_PATH),
            "title": "Restarts in {{ object.metadata.namespace }}",
            "message": "**{{ object.involvedObject.name }}** restarted",
        }));
        let card = render(destination.as_ref(), &k8s_event())["card"].clone();
        assert_eq!(card["header"]["title"]["content"], "Restarts in apps");
        assert_eq!(
            card["elements"],
            json!([{"tag": "div", "text": {"tag": "lark_md", "content": "**web-7d9f** restarted"}}])
        );

        let destination = build(json!({"webhookUrl": receiver.url(HOOK_PATH), "msgType": "text", "title": "Cron"}));
        let text = render(destination.as_ref(), &cron_event())["content"]["text"].as_str().unwrap().to_string();
        assert!(text.starts_with("Cron\ncrashloop: fire from cron\nTrigger: apps/restarts/crashloop\n"), "{text}");
    }

    #[tokio::test]
    async fn error_codes_and_statuses_are_classified_and_urls_never_shown() {
        let receiver = lark(None).await;
        let flood = build(json!({"webhookUrl": receiver.url(HOOK_PATH), "message": "flood"}));
        let error = deliver(flood.as_ref(), &k8s_event()).await.unwrap_err();
        assert!(matches!(error, DeliveryError::Transient { retry_after: None, .. }), "{error:?}");
        assert!(error.to_string().starts_with("Lark refused the message: code 11232: frequency limited"), "{error}");

        let busy = build(json!({"webhookUrl": receiver.url("/busy")}));
        let error = deliver(busy.as_ref(), &k8s_event()).await.unwrap_err();
        assert_eq!(
            error,
            DeliveryError::Transient {
                reason: "HTTP 429 Too Many Requests".into(),
                retry_after: Some(Duration::from_secs(3))
            }
        );

        let legacy = build(json!({"webhookUrl": receiver.url("/legacy")}));
        assert_eq!(deliver(legacy.as_ref(), &k8s_event()).await.unwrap().detail.as_deref(), Some("HTTP 200"));

        let hook = "/open-apis/bot/v2/hook/0000-wronghooksecret";
        let unknown = build(json!({"webhookUrl": receiver.url(hook)}));
        let error = deliver(unknown.as_ref(), &k8s_event()).await.unwrap_err();
        assert!(matches!(error, DeliveryError::Permanent { .. }), "{error:?}");
        let reason = error.to_string();
        assert!(reason.starts_with("Lark refused the message: code 19001: param invalid"), "{reason}");
        assert!(!reason.contains("wronghooksecret") && reason.contains("<redacted>"), "{reason}");

        let dir = tempfile::tempdir().unwrap();
        let lark = concrete(json!({
            "webhookUrl": receiver.url(HOOK_PATH),
            "secretFrom": {"file": secret_file(&dir, "secret", SECRET)},
        }));
        let debug = format!("{lark:?}");
        assert_eq!(debug, "Lark { url: <redacted>, secret: Some(<redacted>), msg_type: Interactive, .. }");
        let rendered = render(&lark, &k8s_event()).to_string();
        assert!(!rendered.contains("larkhooksecret") && !rendered.contains(SECRET), "{rendered}");
    }

    #[test]
    fn invalid_properties_are_refused_with_the_property_named() {
        let err = build_err(json!({"webhookUrl": "https://h/x", "msg_type": "text"}));
        assert!(err.starts_with("properties.msg_type: unknown field `msg_type`"), "{err}");
        let err = build_err(json!({"msgType": "text"}));
        assert!(err.starts_with("properties.webhookUrl: required"), "{err}");
        let err = build_err(json!({"webhookUrl": "https://h/x", "msgType": "post"}));
        assert!(err.starts_with("properties.msgType: unknown variant `post`"), "{err}");
        let err = build_err(json!({"webhookUrl": "https://h/x", "secretFrom": "plain"}));
        assert!(err.starts_with("properties.secretFrom: invalid type"), "{err}");
        let err = build_err(json!({"webhookUrl": "https://h/x", "message": "{% if %}"}));
        assert!(err.starts_with("properties.message: "), "{err}");
    }
}
