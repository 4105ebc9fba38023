//! The `dingtalk` destination: a DingTalk group robot (`/robot/send?access_token=...`), markdown
//! or text messages, optionally signed.
//!
//! Signing, as DingTalk documents it: `timestamp` is the current time in milliseconds,
//! `string_to_sign = timestamp + "\n" + secret`, and
//! `sign = urlencode(base64(HMAC-SHA256(key = secret, message = string_to_sign)))`; both are
//! appended to the webhook URL as `&timestamp=...&sign=...`. DingTalk refuses timestamps more
//! than an hour off.
//!
//! DingTalk answers HTTP 200 with `{"errcode": 0, "errmsg": "ok"}`; any other `errcode` is a
//! failure, transient for its rate-limit codes (the robot takes 20 messages a minute) and for
//! "system busy" (-1), permanent otherwise.

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

/// DingTalk error codes that mean the robot is rate limited, and "system busy".
const TRANSIENT_CODES: &[i64] = &[130101, 410100, -1];

/// Sends a markdown or text message through a DingTalk group robot, signed when a secret is given
#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DingTalkProperties {
    /// Robot webhook URL `https://oapi.dingtalk.com/robot/send?access_token=...` as a literal (it is
    /// a credential: prefer webhookUrlFrom); exactly one of webhookUrl and webhookUrlFrom is
    /// required
    #[serde(default)]
    webhook_url: Option<String>,
    /// Robot webhook URL from a secret reference {env: VAR} / {file: PATH} / {secretKeyRef: {name,
    /// key}}; never logged
    #[serde(default)]
    webhook_url_from: Option<SecretRef>,
    /// The robot's signing secret (SEC...) from a secret reference; when given, every request is
    /// signed (timestamp and sign query parameters); default: unsigned
    #[serde(default)]
    secret_from: Option<SecretRef>,
    /// `markdown` (default): title and markdown text; `text`: plain text
    #[serde(default)]
    msg_type: MsgType,
    /// Template of the title (shown in notifications; first line in text messages); default: what
    /// happened to which object, e.g. `pod-restart: Pod web`
    #[serde(default)]
    title: Option<String>,
    /// Template of the text (markdown for msgType markdown) over object, oldObject, event, context,
    /// now; replaces the default text (object, namespace, trigger, event, time). Include the
    /// robot's keyword here if it uses keyword security
    #[serde(default)]
    message: Option<String>,
    /// Mobile numbers of members to @mention (added to the text as @number); default none
    #[serde(default)]
    at_mobiles: Vec<String>,
    /// Whether to @mention everyone in the group; default false
    #[serde(default)]
    at_all: bool,
}

/// The kind of message sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum MsgType {
    #[default]
    Markdown,
    Text,
}

/// Builds `dingtalk` destinations.
#[derive(Clone, Default)]
pub struct DingTalkFactory {
    client: Option<reqwest::Client>,
}

impl DingTalkFactory {
    /// Destinations that use the process-wide [`http::shared_client`].
    pub fn new() -> Self {
        DingTalkFactory { client: None }
    }

    /// Destinations that use `client` (e.g. one with its own timeout).
    pub fn with_client(client: reqwest::Client) -> Self {
        DingTalkFactory { client: Some(client) }
    }
}

impl DestinationType for DingTalkFactory {
    type Properties = DingTalkProperties;
    const NAME: &'static str = "dingtalk";
    const EXAMPLE: &'static str = r#"type: dingtalk
properties:
  webhookUrlFrom: {env: DINGTALK_WEBHOOK_URL}
  secretFrom: {env: DINGTALK_SECRET}
  atMobiles: ["13800000000"]
"#;

    fn build(&self, props: DingTalkProperties, context: &BuildContext) -> Result<Arc<dyn Destination>, PropertyError> {
        let client = http::client_or_shared(self.client.as_ref())?;
        Ok(Arc::new(DingTalk::new(props, &context.secrets, client)?))
    }
}

/// A built `dingtalk` destination.
struct DingTalk {
    url: SecretUrl,
    secret: Option<Secret>,
    msg_type: MsgType,
    message: MessageSpec,
    at_mobiles: Vec<String>,
    at_all: bool,
    client: reqwest::Client,
    redactions: Vec<String>,
    /// The clock of signatures (tests move it).
    clock: fn() -> DateTime<Utc>,
}

impl DingTalk {
    fn new(
        props: DingTalkProperties,
        secrets: &ClusterSecrets,
        client: reqwest::Client,
    ) -> Result<Self, PropertyError> {
        let message = MessageSpec::new(props.title.as_deref(), props.message.as_deref())?;
        for (index, mobile) in props.at_mobiles.iter().enumerate() {
            if mobile.trim().is_empty() || mobile.chars().any(char::is_whitespace) {
                return Err(PropertyError::new(format!("atMobiles[{index}]"), "not a mobile number"));
            }
        }
        let url = webhook_url(props.webhook_url.as_deref(), props.webhook_url_from.as_ref(), secrets)?;
        let mut redactions = url.fragments();
        let secret =
            props.secret_from.as_ref().map(|reference| reference.resolve(secrets, "secretFrom")).transpose()?;
        if let Some(secret) = &secret {
            redactions.push(secret.expose().to_string());
        }
        Ok(DingTalk {
            url,
            secret,
            msg_type: props.msg_type,
            message,
            at_mobiles: props.at_mobiles,
            at_all: props.at_all,
            client,
            redactions,
            clock: Utc::now,
        })
    }

    /// The JSON body sent for `request`.
    fn payload(&self, request: &DeliveryRequest<'_>) -> Result<Value, DeliveryError> {
        let message = self.message.compose(request)?;
        let mentions: Vec<String> = self.at_mobiles.iter().map(|mobile| format!("@{mobile}")).collect();
        let mut payload = match self.msg_type {
            MsgType::Markdown => {
                let mut text = markdown(&message);
                if !mentions.is_empty() {
                    text.push_str("\n\n");
                    text.push_str(&mentions.join(" "));
                }
                json!({"msgtype": "markdown", "markdown": {"title": message.title, "text": text}})
            }
            MsgType::Text => {
                let mut content = match &message.custom {
                    Some(custom) if message.custom_title => format!("{}\n{custom}", message.title),
                    Some(custom) => custom.clone(),
                    None if message.custom_title => {
                        format!("{}\n{}", message.title, message.summary.plain_text())
                    }
                    None => message.summary.plain_text(),
                };
                if !mentions.is_empty() {
                    content.push('\n');
                    content.push_str(&mentions.join(" "));
                }
                json!({"msgtype": "text", "text": {"content": content}})
            }
        };
        if !self.at_mobiles.is_empty() || self.at_all {
            payload["at"] = json!({"atMobiles": self.at_mobiles, "isAtAll": self.at_all});
        }
        Ok(payload)
    }
}

/// The markdown text: the custom message, or a heading, the detail as a quote, and a list of facts.
fn markdown(message: &Message) -> String {
    if let Some(custom) = &message.custom {
        return custom.clone();
    }
    let summary = &message.summary;
    let mut text = format!("#### {}\n\n", summary.headline);
    if let Some(detail) = &summary.detail {
        text.push_str(&format!("> {detail}\n\n"));
    }
    for fact in &summary.facts {
        text.push_str(&format!("- **{}:** {}\n", fact.label, fact.value));
    }
    text.push_str(&format!("- **Time:** {}", summary.time_text()));
    text
}

/// `base64(HMAC-SHA256(key = secret, message = timestamp + "\n" + secret))`, before URL encoding.
pub fn sign(timestamp_ms: i64, secret: &str) -> String {
    let string_to_sign = format!("{timestamp_ms}\n{secret}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(string_to_sign.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Reads a 2xx answer: `errcode` 0 is delivered, any other code a failure.
fn outcome(answer: &Answer) -> Result<Receipt, DeliveryError> {
    let Some(body) = answer.json() else {
        return Err(answer.unexpected("DingTalk"));
    };
    match code_of(&body, "errcode") {
        Some(0) => Ok(answer.receipt(None)),
        Some(code) => {
            let message = body.get("errmsg").and_then(Value::as_str).unwrap_or("");
            Err(answer.refused("DingTalk", &format!("errcode {code}: {message}"), TRANSIENT_CODES.contains(&code)))
        }
        None => Err(answer.unexpected("DingTalk")),
    }
}

impl fmt::Debug for DingTalk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DingTalk")
            .field("url", &self.url)
            .field("secret", &self.secret)
            .field("msg_type", &self.msg_type)
            .field("at_mobiles", &self.at_mobiles)
            .field("at_all", &self.at_all)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Destination for DingTalk {
    fn render(&self, request: &DeliveryRequest<'_>) -> Result<Value, DeliveryError> {
        self.payload(request)
    }

    async fn deliver(&self, request: &DeliveryRequest<'_>) -> Result<Receipt, DeliveryError> {
        let payload = self.payload(request)?;
        let mut url = self.url.expose().clone();
        if let Some(secret) = &self.secret {
            let timestamp = (self.clock)().timestamp_millis();
            // `append_pair` form-encodes the value: the URL encoding DingTalk asks for.
            url.query_pairs_mut()
                .append_pair("timestamp", &timestamp.to_string())
                .append_pair("sign", &sign(timestamp, secret.expose()));
        }
        let outcome = match post_json(self.client.post(url), &payload).await {
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

    const ACCESS_TOKEN: &str = "dingaccesstoken0123456789";
    const SECRET: &str = "SEC0123456789abcdef0123456789abcdef";

    /// Answers like the DingTalk robot API: HTTP 200 with an errcode. With a `secret`, a request
    /// must carry `timestamp` (ms, within an hour) and `sign`, recomputed here from the formula.
    async fn dingtalk(secret: Option<&'static str>) -> Receiver {
        Receiver::start(move |request| {
            let reply =
                |errcode: i64, errmsg: &str| axum::Json(json!({"errcode": errcode, "errmsg": errmsg})).into_response();
            if request.path == "/busy" {
                return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "9")]).into_response();
            }
            if request.path != "/robot/send" {
                return StatusCode::NOT_FOUND.into_response();
            }
            if request.query.get("access_token").map(String::as_str) != Some(ACCESS_TOKEN) {
                return reply(300001, "token is not exist");
            }
            if let Some(secret) = secret {
                let (Some(timestamp), Some(sign)) = (request.query.get("timestamp"), request.query.get("sign")) else {
                    return reply(310000, "sign not match");
                };
                let Ok(millis) = timestamp.parse::<i64>() else {
                    return reply(310000, "invalid timestamp");
                };
                if (Utc::now().timestamp_millis() - millis).abs() > 3_600_000 {
                    return reply(310000, "invalid timestamp");
                }
                let expected = hmac_sha256_base64(secret.as_bytes(), format!("{timestamp}\n{secret}").as_bytes());
                if *sign != expected {
                    return reply(310000, "sign not match");
                }
            }
            let body = request.json();
            let text = body["markdown"]["text"].as_str().or(body["text"]["content"].as_str()).unwrap_or("");
            if text.contains("flood") {
                return reply(130101, "send too fast, exceed 20 times per minute");
            }
            reply(0, "ok")
        })
        .await
    }

    fn robot_url(receiver: &Receiver) -> String {
        receiver.url(&format!("/robot/send?access_token={ACCESS_TOKEN}"))
    }

    fn build(properties: Value) -> Arc<dyn Destination> {
        TypedDestination::new(DingTalkFactory::new()).build(&properties, &context()).map_err(|e| e.to_string()).unwrap()
    }

    fn build_err(properties: Value) -> String {
        TypedDestination::new(DingTalkFactory::new())
            .build(&properties, &context())
            .map_err(|e| e.to_string())
            .err()
            .expect("the properties should be refused")
    }

    fn concrete(properties: Value) -> DingTalk {
        DingTalk::new(
            parse_properties(&properties).unwrap(),
            &ClusterSecrets::default(),
            http::shared_client().unwrap(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn sends_the_default_markdown_message() {
        let receiver = dingtalk(None).await;
        let destination = build(json!({"webhookUrl": robot_url(&receiver)}));
        let event = k8s_event();
        let receipt = deliver(destination.as_ref(), &event).await.unwrap();
        assert_eq!(receipt.detail.as_deref(), Some("HTTP 200"));

        let request = receiver.only_request();
        assert_eq!(request.method, "POST");
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert!(!request.query.contains_key("sign"), "unsigned without secretFrom");
        let sent = request.json();
        let time = event.meta.time.format("%Y-%m-%d %H:%M:%S UTC");
        assert_eq!(
            sent,
            json!({"msgtype": "markdown", "markdown": {
                "title": "pod-restart: Pod web-7d9f",
                "text": format!("#### pod-restart: Pod web-7d9f\n\n\
                    > BackOff (x5): Back-off restarting failed container web\n\n\
                    - **Object:** Pod web-7d9f\n\
                    - **Namespace:** apps\n\
                    - **Trigger:** apps/restarts/crashloop\n\
                    - **Event:** update from k8s-events (preset pod-restart)\n\
                    - **Time:** {time}"),
            }})
        );
        assert_eq!(render(destination.as_ref(), &event), sent);
    }

    #[tokio::test]
    async fn signed_requests_pass_the_vendor_check() {
        let receiver = dingtalk(Some(SECRET)).await;
        let dir = tempfile::tempdir().unwrap();
        let destination = build(json!({
            "webhookUrlFrom": {"file": secret_file(&dir, "url", &robot_url(&receiver))},
            "secretFrom": {"file": secret_file(&dir, "secret", SECRET)},
        }));
        let before = Utc::now().timestamp_millis();
        deliver(destination.as_ref(), &k8s_event()).await.unwrap();
        let request = receiver.only_request();
        let timestamp: i64 = request.query["timestamp"].parse().unwrap();
        assert!(timestamp >= before && timestamp <= Utc::now().timestamp_millis(), "milliseconds: {timestamp}");
        // The receiver form-decodes the query before checking the signature, so a `+` sent raw
        // (read back as a space) would have failed the check.
        assert_eq!(request.query["access_token"], ACCESS_TOKEN);
    }

    #[tokio::test]
    async fn signatures_are_url_encoded_on_the_wire() {
        // Find a timestamp whose signature has `+` or `/`, sign with it, and look at the raw query.
        let timestamp = (1_700_000_000_000i64..).find(|t| sign(*t, SECRET).contains(['+', '/'])).unwrap();
        let signature = sign(timestamp, SECRET);
        assert_eq!(signature, hmac_sha256_base64(SECRET.as_bytes(), format!("{timestamp}\n{SECRET}").as_bytes()));
        let mut url = reqwest::Url::parse("https://oapi.dingtalk.com/robot/send?access_token=t").unwrap();
        url.query_pairs_mut().append_pair("timestamp", &timestamp.to_string()).append_pair("sign", &signature);
        let query = url.query().unwrap();
        let raw_sign = query.split("&sign=").nth(1).unwrap();
        assert!(!raw_sign.contains(['+', '/', '=']), "{raw_sign}");
        assert!(raw_sign.contains("%2B") || raw_sign.contains("%2F"), "{raw_sign}");
    }

    #[tokio::test]
    async fn a_wrong_secret_or_a_stale_timestamp_is_a_permanent_failure() {
        let receiver = dingtalk(Some(SECRET)).await;
        let dir = tempfile::tempdir().unwrap();
        let wrong_secret = "SECwrongwrongwrongwrong0123456789";
        let destination = build(json!({
            "webhookUrl": robot_url(&receiver),
            "secretFrom": {"file": secret_file(&dir, "secret", wrong_secret)},
        }));
        let error = deliver(destination.as_ref(), &k8s_event()).await.unwrap_err();
        assert_eq!(error, DeliveryError::permanent("DingTalk refused the message: errcode 310000: sign not match"));

        let mut stale = concrete(json!({
            "webhookUrl": robot_url(&receiver),
            "secretFrom": {"file": secret_file(&dir, "right", SECRET)},
        }));
        stale.clock = || Utc::now() - chrono::Duration::minutes(61);
        let error = deliver(&stale, &k8s_event()).await.unwrap_err();
        assert_eq!(error, DeliveryError::permanent("DingTalk refused the message: errcode 310000: invalid timestamp"));
        stale.clock = || Utc::now() - chrono::Duration::minutes(59);
        deliver(&stale, &k8s_event()).await.unwrap();

        let missing = build(json!({"webhookUrl": robot_url(&receiver)}));
        let error = deliver(missing.as_ref(), &k8s_event()).await.unwrap_err();
        assert_eq!(error, DeliveryError::permanent("DingTalk refused the message: errcode 310000: sign not match"));
    }

    #[tokio::test]
    async fn text_messages_with_a_custom_template_and_mentions() {
        let receiver = dingtalk(None).await;
        let destination = build(json!({
            "webhookUrl": robot_url(&receiver),
            "msgType": "text",
            "message": "alert: {{ object.involvedObject.name }} restarted {{ object.count }} times",
            "atMobiles": ["13800000000", "13900000000"],
        }));
        deliver(destination.as_ref(), &k8s_event()).await.unwrap();
        assert_eq!(
            receiver.only_request().json(),
            json!({
                "msgtype": "text",
                "text": {"content": "alert: web-7d9f restarted 5 times\n@13800000000 @13900000000"},
                "at": {"atMobiles": ["13800000000", "13900000000"], "isAtAll": false},
            })
        );

        let destination = build(json!({
            "webhookUrl": robot_url(&receiver),
            "title": "Restarts in {{ object.metadata.namespace }}",
            "message": "**{{ object.involvedObject.name }}**",
            "atAll": true,
        }));
        let sent = render(destination.as_ref(), &k8s_event());
        assert_eq!(
            sent,
            json!({
                "msgtype": "markdown",
                "markdown": {"title": "Restarts in apps", "text": "**web-7d9f**"},
                "at": {"atMobiles": [], "isAtAll": true},
            })
        );

        let destination = build(json!({"webhookUrl": robot_url(&receiver), "msgType": "text"}));
        let content = render(destination.as_ref(), &cron_event())["text"]["content"].as_str().unwrap().to_string();
        assert!(content.starts_with("crashloop: fire from cron\nTrigger: apps/restarts/crashloop\n"), "{content}");
    }

    #[tokio::test]
    async fn error_codes_and_statuses_are_classified() {
        let receiver = dingtalk(None).await;
        let flood = build(json!({"webhookUrl": robot_url(&receiver), "message": "flood"}));
        let error = deliver(flood.as_ref(), &k8s_event()).await.unwrap_err();
        assert_eq!(
            error,
            DeliveryError::Transient {
                reason: "DingTalk refused the message: errcode 130101: send too fast, exceed 20 times per minute \
                         (rate limited)"
                    .into(),
                retry_after: None
            }
        );

        let busy = build(json!({"webhookUrl": receiver.url("/busy")}));
        let error = deliver(busy.as_ref(), &k8s_event()).await.unwrap_err();
        assert!(
            matches!(&error, DeliveryError::Transient { retry_after: Some(after), .. } if *after == Duration::from_secs(9)),
            "{error:?}"
        );

        let unknown = build(json!({"webhookUrl": receiver.url("/robot/send?access_token=nosuchtoken0123")}));
        let error = deliver(unknown.as_ref(), &k8s_event()).await.unwrap_err();
        assert_eq!(error, DeliveryError::permanent("DingTalk refused the message: errcode 300001: token is not exist"));

        let answer =
            Answer { status: reqwest::StatusCode::OK, retry_after: None, body: b"<html>gateway</html>".to_vec() };
        assert_eq!(
            outcome(&answer).unwrap_err(),
            DeliveryError::permanent("DingTalk answered HTTP 200 with an unexpected body: <html>gateway</html>")
        );
    }

    #[test]
    fn debug_and_render_never_show_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let dingtalk = concrete(json!({
            "webhookUrl": format!("https://oapi.dingtalk.com/robot/send?access_token={ACCESS_TOKEN}"),
            "secretFrom": {"file": secret_file(&dir, "secret", SECRET)},
        }));
        let debug = format!("{dingtalk:?}");
        assert!(debug.contains("url: <redacted>, secret: Some(<redacted>)"), "{debug}");
        assert!(!debug.contains(ACCESS_TOKEN) && !debug.contains(SECRET), "{debug}");
        let rendered = render(&dingtalk, &k8s_event()).to_string();
        assert!(!rendered.contains(ACCESS_TOKEN) && !rendered.contains(SECRET), "{rendered}");
        assert!(dingtalk.redactions.contains(&ACCESS_TOKEN.to_string()));
    }

    #[test]
    fn invalid_properties_are_refused_with_the_property_named() {
        let err = build_err(json!({"webhookUrl": "https://h/x", "secret": "SEC1"}));
        assert!(err.starts_with("properties.secret: unknown field `secret`"), "{err}");
        let err = build_err(json!({"atAll": true}));
        assert!(err.starts_with("properties.webhookUrl: required"), "{err}");
        let err = build_err(json!({"webhookUrl": "https://h/x", "msgType": "actionCard"}));
        assert!(err.starts_with("properties.msgType: unknown variant `actionCard`"), "{err}");
        let err = build_err(json!({"webhookUrl": "https://h/x", "atMobiles": ["138 0000"]}));
        assert_eq!(err, "properties.atMobiles[0]: not a mobile number");
        let err = build_err(json!({"webhookUrl": "https://h/x", "atAll": "yes"}));
        assert!(err.starts_with("properties.atAll: invalid type"), "{err}");
        let err = build_err(json!({"webhookUrl": "https://h/x", "secretFrom": {"env": "KTRIGGER_TEST_DING_UNSET"}}));
        assert_eq!(err, "properties.secretFrom: environment variable KTRIGGER_TEST_DING_UNSET is not set");
        let err = build_err(json!({"webhookUrl": "https://h/x", "title": "{{ who }}"}));
        assert!(err.starts_with("properties.title: unknown variable(s) who"), "{err}");
    }
}
