//! The `teams` destination: an Adaptive Card posted to a Microsoft Teams Workflows (Power
//! Automate) webhook or an incoming webhook.
//!
//! Workflows answer 202 Accepted. Retired Office 365 connectors could answer HTTP 200 with a text
//! saying that delivery failed; such an answer is a failure too (transient when it reports a 429).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use ktrigger_core::ClusterSecrets;
use ktrigger_core::DestinationType;
use ktrigger_core::PropertyError;
use ktrigger_core::SecretRef;
use ktrigger_core::{BuildContext, DeliveryError, DeliveryRequest, Destination, Receipt};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http;
use crate::message::{Answer, Message, MessageSpec, SecretUrl, as_strs, post_json, webhook_url};

/// Content type of an Adaptive Card attachment.
pub const ADAPTIVE_CARD_CONTENT_TYPE: &str = "application/vnd.microsoft.card.adaptive";

/// Posts an Adaptive Card to a Microsoft Teams Workflows (Power Automate) or incoming webhook
#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TeamsProperties {
    /// Webhook URL as a literal (it is a credential: prefer webhookUrlFrom); exactly one of
    /// webhookUrl and webhookUrlFrom is required
    #[serde(default)]
    webhook_url: Option<String>,
    /// Webhook URL from a secret reference {env: VAR} / {file: PATH} / {secretKeyRef: {name, key}};
    /// never logged
    #[serde(default)]
    webhook_url_from: Option<SecretRef>,
    /// Template of the card's title; default: what happened to which object, e.g. `pod-restart: Pod
    /// web`
    #[serde(default)]
    title: Option<String>,
    /// Template of the card's text (Teams markdown subset) over object, oldObject, event, context,
    /// now; replaces the default text and facts (object, namespace, trigger, event, time)
    #[serde(default)]
    message: Option<String>,
}

/// Builds `teams` destinations.
#[derive(Clone, Default)]
pub struct TeamsFactory {
    client: Option<reqwest::Client>,
}

impl TeamsFactory {
    /// Destinations that use the process-wide [`http::shared_client`].
    pub fn new() -> Self {
        TeamsFactory { client: None }
    }

    /// Destinations that use `client` (e.g. one with its own timeout).
    pub fn with_client(client: reqwest::Client) -> Self {
        TeamsFactory { client: Some(client) }
    }
}

impl DestinationType for TeamsFactory {
    type Properties = TeamsProperties;
    const NAME: &'static str = "teams";
    const EXAMPLE: &'static str = r#"type: teams
properties:
  webhookUrlFrom: {env: TEAMS_WEBHOOK_URL}
  title: "{{ object.metadata.name }} changed"
"#;

    fn build(&self, props: TeamsProperties, context: &BuildContext) -> Result<Arc<dyn Destination>, PropertyError> {
        let client = http::client_or_shared(self.client.as_ref())?;
        Ok(Arc::new(Teams::new(props, &context.secrets, client)?))
    }
}

/// A built `teams` destination.
struct Teams {
    url: SecretUrl,
    message: MessageSpec,
    client: reqwest::Client,
    redactions: Vec<String>,
}

impl Teams {
    fn new(props: TeamsProperties, secrets: &ClusterSecrets, client: reqwest::Client) -> Result<Self, PropertyError> {
        let message = MessageSpec::new(props.title.as_deref(), props.message.as_deref())?;
        let url = webhook_url(props.webhook_url.as_deref(), props.webhook_url_from.as_ref(), secrets)?;
        let redactions = url.fragments();
        Ok(Teams { url, message, client, redactions })
    }

    /// The JSON body sent for `request`.
    fn payload(&self, request: &DeliveryRequest<'_>) -> Result<Value, DeliveryError> {
        Ok(json!({
            "type": "message",
            "attachments": [{
                "contentType": ADAPTIVE_CARD_CONTENT_TYPE,
                "content": card(&self.message.compose(request)?),
            }],
        }))
    }
}

/// The Adaptive Card: a title, then the custom text, or the detail and a FactSet.
fn card(message: &Message) -> Value {
    let mut body = vec![json!({
        "type": "TextBlock",
        "text": message.title,
        "size": "Large",
        "weight": "Bolder",
        "style": "heading",
        "wrap": true,
    })];
    let summary = &message.summary;
    match &message.custom {
        Some(text) => body.push(json!({"type": "TextBlock", "text": text, "wrap": true})),
        None => {
            if let Some(detail) = &summary.detail {
                body.push(json!({"type": "TextBlock", "text": detail, "wrap": true}));
            }
            let mut facts: Vec<Value> =
                summary.facts.iter().map(|fact| json!({"title": fact.label, "value": fact.value})).collect();
            facts.push(json!({"title": "Time", "value": summary.time_text()}));
            body.push(json!({"type": "FactSet", "facts": facts}));
        }
    }
    json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
        "msteams": {"width": "Full"},
    })
}

/// Reads a 2xx answer: empty (Workflows) or `1` (connectors) is delivered; a connector's
/// "delivery failed" text is a failure.
fn outcome(answer: &Answer) -> Result<Receipt, DeliveryError> {
    let text = String::from_utf8_lossy(&answer.body);
    if text.contains("delivery failed") || text.contains("returned HTTP error") {
        return Err(answer.refused("Teams", &text, text.contains("HTTP error 429")));
    }
    Ok(answer.receipt(None))
}

impl fmt::Debug for Teams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Teams").field("url", &self.url).finish_non_exhaustive()
    }
}

#[async_trait]
impl Destination for Teams {
    fn render(&self, request: &DeliveryRequest<'_>) -> Result<Value, DeliveryError> {
        self.payload(request)
    }

    async fn deliver(&self, request: &DeliveryRequest<'_>) -> Result<Receipt, DeliveryError> {
        let payload = self.payload(request)?;
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

    const FLOW_PATH: &str = "/workflows/8f2c/triggers/manual/paths/invoke";
    const SIG: &str = "flowsignature0123456789";

    /// Answers like Teams: Workflows 202, throttled connectors 200 with an error text, others by status.
    async fn teams() -> Receiver {
        Receiver::start(|request| match request.path.as_str() {
            FLOW_PATH if request.query.get("sig").map(String::as_str) == Some(SIG) => {
                StatusCode::ACCEPTED.into_response()
            }
            FLOW_PATH => {
                (StatusCode::UNAUTHORIZED, format!("invalid sig {:?}", request.query.get("sig"))).into_response()
            }
            "/connector/throttled" => "Webhook message delivery failed with error: Microsoft Teams endpoint returned \
                                       HTTP error 429 with ContextId tcid=0,server=msgapi-canary-eus2-0"
                .into_response(),
            "/connector/ok" => "1".into_response(),
            "/busy" => (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "5")]).into_response(),
            _ => (StatusCode::BAD_REQUEST, "Bad payload").into_response(),
        })
        .await
    }

    fn flow_url(receiver: &Receiver, sig: &str) -> String {
        receiver.url(&format!("{FLOW_PATH}?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={sig}"))
    }

    fn build(properties: Value) -> Arc<dyn Destination> {
        TypedDestination::new(TeamsFactory::new()).build(&properties, &context()).map_err(|e| e.to_string()).unwrap()
    }

    fn build_err(properties: Value) -> String {
        TypedDestination::new(TeamsFactory::new())
            .build(&properties, &context())
            .map_err(|e| e.to_string())
            .err()
            .expect("the properties should be refused")
    }

    #[tokio::test]
    async fn posts_an_adaptive_card_with_facts() {
        let receiver = teams().await;
        let destination = build(json!({"webhookUrl": flow_url(&receiver, SIG)}));
        let event = k8s_event();
        let receipt = deliver(destination.as_ref(), &event).await.unwrap();
        assert_eq!(receipt.detail.as_deref(), Some("HTTP 202"));

        let request = receiver.only_request();
        assert_eq!(request.header("content-type"), Some("application/json"));
        let sent = request.json();
        assert_eq!(sent["type"], "message");
        let attachments = sent["attachments"].as_array().unwrap();
        assert_eq!(attachments.len(), 1);
        assert_eq!(attachments[0]["contentType"], ADAPTIVE_CARD_CONTENT_TYPE);
        let card = &attachments[0]["content"];
        assert_eq!(card["$schema"], "http://adaptivecards.io/schemas/adaptive-card.json");
        assert_eq!(card["type"], "AdaptiveCard");
        assert_eq!(card["version"], "1.4");
        let body = card["body"].as_array().unwrap();
        assert_eq!(body[0]["type"], "TextBlock");
        assert_eq!(body[0]["text"], "pod-restart: Pod web-7d9f");
        assert_eq!(body[1]["text"], "BackOff (x5): Back-off restarting failed container web");
        assert_eq!(body[2]["type"], "FactSet");
        assert_eq!(
            body[2]["facts"],
            json!([
                {"title": "Object", "value": "Pod web-7d9f"},
                {"title": "Namespace", "value": "apps"},
                {"title": "Trigger", "value": "apps/restarts/crashloop"},
                {"title": "Event", "value": "update from k8s-events (preset pod-restart)"},
                {"title": "Time", "value": event.meta.time.format("%Y-%m-%d %H:%M:%S UTC").to_string()},
            ])
        );
        assert_eq!(render(destination.as_ref(), &event), sent);
    }

    #[tokio::test]
    async fn custom_title_and_message_replace_the_default_text() {
        let receiver = teams().await;
        let destination = build(json!({
            "webhookUrl": flow_url(&receiver, SIG),
            "title": "Restart of {{ object.involvedObject.name }}",
            "message": "It restarted **{{ object.count }}** times.",
        }));
        deliver(destination.as_ref(), &k8s_event()).await.unwrap();
        let body = receiver.only_request().json()["attachments"][0]["content"]["body"].clone();
        assert_eq!(body.as_array().unwrap().len(), 2, "{body:#}");
        assert_eq!(body[0]["text"], "Restart of web-7d9f");
        assert_eq!(body[1], json!({"type": "TextBlock", "text": "It restarted **5** times.", "wrap": true}));
    }

    #[tokio::test]
    async fn failures_are_classified_and_urls_never_shown() {
        let receiver = teams().await;
        let event = k8s_event();

        let wrong = build(json!({"webhookUrl": flow_url(&receiver, "wrongsignature0123456")}));
        let error = deliver(wrong.as_ref(), &event).await.unwrap_err();
        assert!(matches!(error, DeliveryError::Permanent { .. }), "{error:?}");
        assert!(error.to_string().starts_with("HTTP 401 Unauthorized: invalid sig"), "{error}");
        assert!(!error.to_string().contains("wrongsignature0123456"), "{error}");

        let throttled = build(json!({"webhookUrl": receiver.url("/connector/throttled")}));
        let error = deliver(throttled.as_ref(), &event).await.unwrap_err();
        assert!(matches!(error, DeliveryError::Transient { .. }), "{error:?}");
        assert!(error.to_string().starts_with("Teams refused the message: Webhook message delivery failed"), "{error}");

        let ok = build(json!({"webhookUrl": receiver.url("/connector/ok")}));
        assert_eq!(deliver(ok.as_ref(), &event).await.unwrap().detail.as_deref(), Some("HTTP 200"));

        let busy = build(json!({"webhookUrl": receiver.url("/busy")}));
        let error = deliver(busy.as_ref(), &event).await.unwrap_err();
        assert_eq!(
            error,
            DeliveryError::Transient {
                reason: "HTTP 429 Too Many Requests".into(),
                retry_after: Some(Duration::from_secs(5))
            }
        );

        let bad = build(json!({"webhookUrl": receiver.url("/elsewhere")}));
        assert_eq!(
            deliver(bad.as_ref(), &event).await.unwrap_err(),
            DeliveryError::permanent("HTTP 400 Bad Request: Bad payload")
        );
    }

    #[test]
    fn debug_and_render_never_show_the_url() {
        let url = format!("https://prod.westeurope.logic.azure.com{FLOW_PATH}?sig={SIG}");
        let teams = Teams::new(
            parse_properties(&json!({"webhookUrl": url})).unwrap(),
            &ClusterSecrets::default(),
            http::shared_client().unwrap(),
        )
        .unwrap();
        let debug = format!("{teams:?}");
        assert_eq!(debug, "Teams { url: <redacted>, .. }");
        let rendered = render(&teams, &k8s_event()).to_string();
        assert!(!rendered.contains(SIG) && !rendered.contains("logic.azure.com"), "{rendered}");
    }

    #[test]
    fn invalid_properties_are_refused_with_the_property_named() {
        let err = build_err(json!({"webhookUrl": "https://h/x", "color": "red"}));
        assert!(err.starts_with("properties.color: unknown field `color`"), "{err}");
        let err = build_err(json!({"title": "x"}));
        assert!(err.starts_with("properties.webhookUrl: required"), "{err}");
        let err = build_err(json!({"webhookUrl": "https://h/x", "title": "{{ object.metadata.name"}));
        assert!(err.starts_with("properties.title: "), "{err}");
        let err = build_err(json!({"webhookUrl": "https://h/x", "message": "{{ obj }}"}));
        assert!(err.starts_with("properties.message: unknown variable(s) obj"), "{err}");
        let err = build_err(json!({"webhookUrlFrom": {"env": "KTRIGGER_TEST_TEAMS_UNSET"}}));
        assert_eq!(err, "properties.webhookUrlFrom: environment variable KTRIGGER_TEST_TEAMS_UNSET is not set");
    }
}
