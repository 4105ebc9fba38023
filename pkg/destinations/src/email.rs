//! The `email` destination: one message per delivery over SMTP (lettre, rustls over ring).
//!
//! The connection is STARTTLS by default (`tls: starttls`, port 587), implicit TLS with
//! `tls: tls` (port 465), or plain text with `tls: none` (port 25) for relays on a trusted
//! network. Server certificates are checked against the platform's roots, plus `caFile` for a
//! private CA. Every attempt of a delivery sends the same `Message-ID`, so receivers can tell a
//! retry from a new message.
//!
//! The server's name is resolved through the egress policy at every delivery and the connection
//! goes to an allowed address only; a server whose every address is refused fails permanently.
//!
//! SMTP outcomes: a 5xx reply is permanent, a 4xx reply transient; connection, TLS and timeout
//! errors are transient; a server lacking STARTTLS or a usable AUTH mechanism is permanent.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use ktrigger_core::ClusterSecrets;
use ktrigger_core::DestinationType;
use ktrigger_core::PropertyError;
use ktrigger_core::SecretRef;
use ktrigger_core::Template;
use ktrigger_core::{BuildContext, DeliveryError, DeliveryRequest, Destination, Receipt};
use ktrigger_core::{EgressError, EgressPolicy};
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http;

/// Subject used when none is configured.
pub const DEFAULT_SUBJECT: &str = "[ktrigger] {{ event.trigger }}: {{ event.preset or event.type }}\
{% set name = (object.involvedObject or object.regarding or object.metadata or object).name %}\
{% if name %} {{ name }}{% endif %}";

/// Plain-text body used when none is configured.
pub const DEFAULT_BODY: &str = "\
{%- set name = (object.involvedObject or object.regarding or object.metadata or object).name -%}
{%- set namespace = (object.involvedObject or object.regarding or {}).namespace or (object.metadata or {}).namespace -%}
Trigger {{ event.trigger }} fired on a {{ event.preset or event.type }} event from the {{ event.source }} source.

Time: {{ event.time }}
{%- if name %}
Object: {{ name }}{% if namespace %} in namespace {{ namespace }}{% endif %}
{%- endif %}
{%- if object.reason %}
Reason: {{ object.reason }}
{%- endif %}
{%- if object.message or object.note %}
Message: {{ object.message or object.note }}
{%- endif %}
Event id: {{ event.id }}

The object:
{{ object | tojson(indent=2) }}
";

/// Header carrying the delivery id.
const DELIVERY_ID_HEADER: HeaderName = HeaderName::new_from_ascii_str("X-Ktrigger-Delivery-Id");

/// Sends an email per delivery over SMTP (STARTTLS, implicit TLS or plain), plain text with an
/// optional HTML part
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmailProperties {
    /// SMTP server host name or IP address
    host: String,
    /// SMTP port; default 587 with tls: starttls, 465 with tls: tls, 25 with tls: none
    #[serde(default)]
    port: Option<u16>,
    /// `starttls` (default): upgrade the connection, refusing servers without STARTTLS; `tls`:
    /// implicit TLS from the first byte; `none`: plain text, for relays on a trusted network
    #[serde(default)]
    tls: TlsMode,
    /// Secret reference {env: VAR} / {file: PATH} / {secretKeyRef: {name, key}} of the SMTP AUTH
    /// user name; needs passwordFrom
    #[serde(default)]
    username_from: Option<SecretRef>,
    /// Secret reference of the SMTP AUTH password; never logged
    #[serde(default)]
    password_from: Option<SecretRef>,
    /// Sender mailbox, `alerts@example.com` or `ktrigger <alerts@example.com>`
    from: String,
    /// Recipient mailbox, or a list of them
    to: Addresses,
    /// Copy recipient mailbox, or a list of them
    #[serde(default)]
    cc: Option<Addresses>,
    /// Template of the subject over object, oldObject, event, context, now (one line); default
    /// `[ktrigger] <trigger>: <preset or event type> <object name>`
    #[serde(default)]
    subject: Option<String>,
    /// Template of the plain-text body; default: what fired, when, the object's name, reason and
    /// message, and the object as indented JSON
    #[serde(default)]
    body: Option<String>,
    /// Template of an HTML body; with it the message is multipart/alternative with both parts
    /// (values are not HTML-escaped: use the `escape` filter)
    #[serde(default)]
    html: Option<String>,
    /// Path of a PEM file of CA certificates trusted besides the platform's (private CAs); only
    /// with tls: starttls or tls
    #[serde(default)]
    ca_file: Option<String>,
}

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum TlsMode {
    /// Plain connection upgraded with STARTTLS, which the server must offer.
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS).
    Tls,
    /// No encryption.
    None,
}

impl TlsMode {
    fn default_port(self) -> u16 {
        match self {
            TlsMode::Starttls => 587,
            TlsMode::Tls => 465,
            TlsMode::None => 25,
        }
    }

    fn name(self) -> &'static str {
        match self {
            TlsMode::Starttls => "starttls",
            TlsMode::Tls => "tls",
            TlsMode::None => "none",
        }
    }
}

/// One address or a list of them.
#[derive(Debug, Deserialize)]
#[serde(try_from = "Value")]
struct Addresses(Vec<String>);

impl JsonSchema for Addresses {
    fn schema_name() -> Cow<'static, str> {
        "Addresses".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]})
    }
}

impl TryFrom<Value> for Addresses {
    type Error = String;

    fn try_from(value: Value) -> Result<Self, String> {
        match value {
            Value::String(one) => Ok(Addresses(vec![one])),
            Value::Array(many) => many
                .into_iter()
                .map(|item| match item {
                    Value::String(address) => Ok(address),
                    other => Err(format!("expected an address, got {other}")),
                })
                .collect::<Result<_, _>>()
                .map(Addresses),
            _ => Err("expected an address or a list of addresses".into()),
        }
    }
}

/// Builds `email` destinations.
#[derive(Clone, Default)]
pub struct EmailFactory {
    egress: Arc<EgressPolicy>,
}

impl EmailFactory {
    /// A factory whose destinations connect where [`EgressPolicy::local`] allows.
    pub fn new() -> Self {
        EmailFactory::default()
    }

    /// A factory whose destinations connect only where `egress` allows.
    pub fn with_egress(egress: Arc<EgressPolicy>) -> Self {
        EmailFactory { egress }
    }
}

impl DestinationType for EmailFactory {
    type Properties = EmailProperties;
    const NAME: &'static str = "email";
    const EXAMPLE: &'static str = r#"type: email
properties:
  host: smtp.example.com          # STARTTLS on port 587
  usernameFrom: {secretKeyRef: {name: smtp, key: username}}
  passwordFrom: {secretKeyRef: {name: smtp, key: password}}
  from: "ktrigger <alerts@example.com>"
  to: [oncall@example.com]
  subject: "{{ object.involvedObject.name }} restarted {{ object.count }} times"
"#;

    fn build(&self, props: EmailProperties, context: &BuildContext) -> Result<Arc<dyn Destination>, PropertyError> {
        Ok(Arc::new(Email::new(props, &context.secrets, self.egress.clone())?))
    }
}

/// A built `email` destination.
struct Email {
    host: String,
    port: u16,
    tls: TlsMode,
    from: Mailbox,
    to: Vec<Mailbox>,
    cc: Vec<Mailbox>,
    subject: Template,
    body: Template,
    html: Option<Template>,
    /// The password, only to scrub it from failure reasons.
    password: Option<String>,
    credentials: Option<Credentials>,
    /// TLS set up for `host`, whichever of its addresses the connection goes to.
    tls_setup: Tls,
    egress: Arc<EgressPolicy>,
}

impl Email {
    fn new(props: EmailProperties, secrets: &ClusterSecrets, egress: Arc<EgressPolicy>) -> Result<Self, PropertyError> {
        let host = props.host.trim().to_string();
        if host.is_empty() || host.contains(char::is_whitespace) || host.contains('/') {
            return Err(PropertyError::new("host", format!("{:?} is not a host name or IP address", props.host)));
        }
        let port = props.port.unwrap_or(props.tls.default_port());
        if port == 0 {
            return Err(PropertyError::new("port", "must be between 1 and 65535"));
        }

        let from = mailbox(&props.from).map_err(|e| PropertyError::new("from", e))?;
        let to = mailboxes("to", &props.to.0)?;
        if to.is_empty() {
            return Err(PropertyError::new("to", "give at least one recipient"));
        }
        let cc = match &props.cc {
            Some(cc) => mailboxes("cc", &cc.0)?,
            None => Vec::new(),
        };

        let subject = Template::compile(props.subject.as_deref().unwrap_or(DEFAULT_SUBJECT))
            .map_err(|e| PropertyError::new("subject", e))?;
        let body = Template::compile(props.body.as_deref().unwrap_or(DEFAULT_BODY))
            .map_err(|e| PropertyError::new("body", e))?;
        let html =
            props.html.as_deref().map(Template::compile).transpose().map_err(|e| PropertyError::new("html", e))?;

        let credentials = match (&props.username_from, &props.password_from) {
            (None, None) => None,
            (Some(user), Some(password)) => {
                let user = user.resolve(secrets, "usernameFrom")?;
                let password = password.resolve(secrets, "passwordFrom")?;
                Some((user.expose().to_string(), password.expose().to_string()))
            }
            (Some(_), None) => return Err(PropertyError::new("passwordFrom", "needed with usernameFrom")),
            (None, Some(_)) => return Err(PropertyError::new("usernameFrom", "needed with passwordFrom")),
        };

        let tls = match props.tls {
            TlsMode::None => {
                if props.ca_file.is_some() {
                    return Err(PropertyError::new("caFile", "only applies with tls: starttls or tls"));
                }
                Tls::None
            }
            mode => {
                // lettre uses the process-wide provider when one is installed: make it ring.
                ktrigger_core::tls::ensure_crypto_provider();
                let mut parameters = TlsParameters::builder(host.clone());
                if let Some(path) = &props.ca_file {
                    let pem = secrets.credentials().read_file(path).map_err(|e| PropertyError::new("caFile", e))?;
                    let certificate = Certificate::from_pem(&pem)
                        .map_err(|e| PropertyError::new("caFile", format!("{path} holds no PEM certificate: {e}")))?;
                    parameters = parameters.add_root_certificate(certificate);
                }
                let parameters = parameters
                    .build_rustls()
                    .map_err(|e| PropertyError::new("tls", format!("cannot set up TLS: {e}")))?;
                if mode == TlsMode::Tls { Tls::Wrapper(parameters) } else { Tls::Required(parameters) }
            }
        };

        let password = credentials.as_ref().map(|(_, secret)| secret.clone());
        let credentials = credentials.map(|(user, secret)| Credentials::new(user, secret));

        Ok(Email {
            host,
            port,
            tls: props.tls,
            from,
            to,
            cc,
            subject,
            body,
            html,
            password,
            credentials,
            tls_setup: tls,
            egress,
        })
    }

    /// A transport to an address of the server that the egress policy allows, resolved now so
    /// that a changed DNS record is checked too.
    async fn transport(&self) -> Result<AsyncSmtpTransport<Tokio1Executor>, DeliveryError> {
        let addresses = self.egress.resolve(&self.host, self.port).await.map_err(|error| match error {
            EgressError::Refused(refused) => DeliveryError::permanent(format!("connection refused: {refused}")),
            lookup => DeliveryError::transient(format!("SMTP: {lookup}")),
        })?;
        let Some(address) = addresses.first() else {
            return Err(DeliveryError::transient(format!("SMTP: {} has no address", self.host)));
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(address.ip().to_string())
            .port(self.port)
            .tls(self.tls_setup.clone());
        if let Some(credentials) = &self.credentials {
            builder = builder.credentials(credentials.clone());
        }
        Ok(builder.build())
    }

    /// Subject, plain body and HTML body of the message for `request`.
    fn texts(&self, request: &DeliveryRequest<'_>) -> Result<(String, String, Option<String>), DeliveryError> {
        let scope = request.scope();
        let failed = |what: &str, e: String| DeliveryError::permanent(format!("properties.{what}: {e}"));
        let subject = self.subject.render(&scope).map_err(|e| failed("subject", e))?;
        let subject = subject.split_whitespace().collect::<Vec<_>>().join(" ");
        let body = self.body.render(&scope).map_err(|e| failed("body", e))?;
        let html = self.html.as_ref().map(|t| t.render(&scope)).transpose().map_err(|e| failed("html", e))?;
        Ok((subject, body, html))
    }

    fn message(&self, request: &DeliveryRequest<'_>) -> Result<Message, DeliveryError> {
        let (subject, body, html) = self.texts(request)?;
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .message_id(Some(message_id(request.id)))
            .raw_header(HeaderValue::new(DELIVERY_ID_HEADER, request.id.to_string()));
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        for cc in &self.cc {
            builder = builder.cc(cc.clone());
        }
        let message = match html {
            Some(html) => builder.multipart(MultiPart::alternative_plain_html(body, html)),
            None => builder.singlepart(SinglePart::plain(body)),
        };
        message.map_err(|e| DeliveryError::permanent(format!("cannot build the message: {e}")))
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Email")
            .field("server", &format!("{}:{}", self.host, self.port))
            .field("tls", &self.tls)
            .field("from", &self.from.to_string())
            .field("to", &self.to.iter().map(Mailbox::to_string).collect::<Vec<_>>())
            .field("auth", &self.password.is_some())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Destination for Email {
    fn render(&self, request: &DeliveryRequest<'_>) -> Result<Value, DeliveryError> {
        let (subject, body, html) = self.texts(request)?;
        let list = |boxes: &[Mailbox]| boxes.iter().map(Mailbox::to_string).collect::<Vec<_>>();
        Ok(json!({
            "server": format!("{}:{}", self.host, self.port),
            "tls": self.tls.name(),
            "auth": self.password.is_some(),
            "from": self.from.to_string(),
            "to": list(&self.to),
            "cc": list(&self.cc),
            "messageId": message_id(request.id),
            "subject": subject,
            "body": body,
            "html": html,
        }))
    }

    async fn deliver(&self, request: &DeliveryRequest<'_>) -> Result<Receipt, DeliveryError> {
        let message = self.message(request)?;
        match self.transport().await?.send(message).await {
            Ok(response) => {
                let said = response.message().collect::<Vec<_>>().join(" ");
                let detail = format!("SMTP {} {}", response.code(), http::snippet(&said));
                Ok(Receipt { detail: Some(detail.trim_end().to_string()) })
            }
            Err(error) => {
                let secrets: Vec<&str> = self.password.as_deref().into_iter().collect();
                Err(http::redact(classify(&error), &secrets))
            }
        }
    }
}

/// Whether an SMTP failure may pass on retry: 5xx replies and client-side refusals (no STARTTLS,
/// no usable AUTH mechanism) cannot; 4xx replies, connection, TLS and timeout errors may.
fn classify(error: &lettre::transport::smtp::Error) -> DeliveryError {
    // lettre repeats the kind of some errors in their source ("Connection error: Connection error: ...").
    let mut said: Vec<&str> = Vec::new();
    let text = error.to_string();
    for piece in text.split(": ") {
        if said.last() != Some(&piece) {
            said.push(piece);
        }
    }
    let reason = format!("SMTP: {}", http::snippet(&said.join(": ")));
    if error.is_permanent() || error.is_client() {
        DeliveryError::permanent(reason)
    } else {
        DeliveryError::transient(reason)
    }
}

/// `<delivery id>@ktrigger`, with characters that cannot appear in a Message-ID replaced.
fn message_id(delivery: &str) -> String {
    let id: String =
        delivery.chars().map(|c| if c.is_ascii_alphanumeric() || "-._".contains(c) { c } else { '-' }).collect();
    format!("<{id}@ktrigger>")
}

fn mailbox(text: &str) -> Result<Mailbox, String> {
    text.trim().parse::<Mailbox>().map_err(|e| format!("{text:?} is not a valid address: {e}"))
}

fn mailboxes(property: &str, addresses: &[String]) -> Result<Vec<Mailbox>, PropertyError> {
    addresses
        .iter()
        .enumerate()
        .map(|(index, address)| mailbox(address).map_err(|e| PropertyError::new(format!("{property}[{index}]"), e)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktrigger_core::{DestinationFactory, Event, TriggerId, TypedDestination};

    fn build(properties: Value) -> Result<Arc<dyn Destination>, String> {
        let trigger = TriggerId { namespace: "apps".into(), service: "mail".into(), trigger: "crashloop".into() };
        TypedDestination::new(EmailFactory::new())
            .build(&properties, &BuildContext::new(trigger))
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn a_server_the_egress_policy_refuses_is_a_permanent_failure() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let properties =
            json!({"host": "localhost", "port": port, "tls": "none", "from": "a@example.com", "to": "b@example.com"});
        let trigger = TriggerId { namespace: "apps".into(), service: "mail".into(), trigger: "crashloop".into() };
        let factory = TypedDestination::new(EmailFactory::with_egress(Arc::new(EgressPolicy::shared(&[]))));
        let email = factory.build(&properties, &BuildContext::new(trigger.clone())).unwrap();
        let event = Event::new("cron", "fire", json!({}));
        let request = DeliveryRequest { id: "d/1", trigger: &trigger, event: &event, attempt: 1 };
        let error = email.deliver(&request).await.unwrap_err();
        assert!(matches!(error, DeliveryError::Permanent { .. }), "{error:?}");
        assert!(error.to_string().ends_with("is refused by the egress policy (loopback)"), "{error}");
        let accepted = tokio::time::timeout(std::time::Duration::from_millis(100), listener.accept()).await;
        assert!(accepted.is_err(), "no connection was made");
    }

    fn request_render(destination: &Arc<dyn Destination>, event: &Event) -> Value {
        let trigger = TriggerId { namespace: "apps".into(), service: "mail".into(), trigger: "crashloop".into() };
        let request = DeliveryRequest { id: "d/1", trigger: &trigger, event, attempt: 1 };
        destination.render(&request).unwrap()
    }

    #[test]
    fn load_errors_name_the_property() {
        let base = json!({"host": "smtp.example.com", "from": "a@example.com", "to": "b@example.com"});
        let with = |field: &str, value: Value| {
            let mut properties = base.clone();
            properties[field] = value;
            properties
        };
        let cases = [
            (json!({"from": "a@example.com", "to": "b@example.com"}), "missing field `host`"),
            (json!({"host": "h", "to": "b@example.com"}), "missing field `from`"),
            (json!({"host": "h", "from": "a@example.com"}), "missing field `to`"),
            (with("host", json!("smtp example")), "properties.host: \"smtp example\" is not a host"),
            (with("from", json!("not an address")), "properties.from: \"not an address\" is not a valid address"),
            (with("to", json!(["ok@example.com", "nope@"])), "properties.to[1]: \"nope@\" is not a valid address"),
            (with("to", json!([])), "properties.to: give at least one recipient"),
            (with("to", json!(3)), "properties.to: expected an address or a list of addresses"),
            (with("cc", json!(["x"])), "properties.cc[0]:"),
            (with("tls", json!("ssl")), "properties.tls: unknown variant `ssl`"),
            (with("port", json!(0)), "properties.port: must be between 1 and 65535"),
            (with("subject", json!("{{ pod }}")), "properties.subject: unknown variable(s) pod"),
            (with("body", json!("{% if %}")), "properties.body:"),
            (with("html", json!("{{ object. }}")), "properties.html:"),
            (
                with("usernameFrom", json!({"env": "KTRIGGER_TEST_SMTP_USER"})),
                "properties.passwordFrom: needed with usernameFrom",
            ),
            (
                with("passwordFrom", json!({"env": "KTRIGGER_TEST_UNSET"})),
                "properties.usernameFrom: needed with passwordFrom",
            ),
            (with("caFile", json!("/nonexistent/ca.pem")), "properties.caFile: cannot read /nonexistent/ca.pem"),
            (with("bcc", json!("x@example.com")), "unknown field `bcc`"),
        ];
        for (properties, expected) in cases {
            let err = build(properties.clone()).err().unwrap_or_else(|| panic!("{properties} loaded"));
            assert!(err.contains(expected), "{properties}: {err}");
        }
        let mut plain = with("tls", json!("none"));
        plain["caFile"] = json!("/etc/ssl/ca.pem");
        assert_eq!(build(plain).err().unwrap(), "properties.caFile: only applies with tls: starttls or tls");
    }

    #[test]
    fn ports_default_by_tls_mode() {
        for (tls, port) in [("starttls", 587), ("tls", 465), ("none", 25)] {
            let destination = build(json!({"host": "mx", "tls": tls, "from": "a@x.io", "to": "b@x.io"})).unwrap();
            let shown = request_render(&destination, &Event::new("cron", "fire", json!({})));
            assert_eq!(shown["server"], format!("mx:{port}"));
            assert_eq!(shown["tls"], tls);
        }
    }

    #[test]
    fn default_subject_and_body_describe_the_event() {
        let destination = build(json!({"host": "mx", "from": "a@x.io", "to": ["b@x.io", "C <c@x.io>"]})).unwrap();
        let mut event = Event::new(
            "k8s-events",
            "create",
            json!({"involvedObject": {"kind": "Pod", "name": "web-0", "namespace": "apps"}, "reason": "BackOff",
                   "message": "Back-off restarting failed container", "count": 3}),
        );
        event.meta.preset = Some("pod-restart".into());
        let shown = request_render(&destination, &event);
        assert_eq!(shown["subject"], "[ktrigger] crashloop: pod-restart web-0");
        assert_eq!(shown["to"], json!(["b@x.io", "C <c@x.io>"]));
        assert_eq!(shown["messageId"], "<d-1@ktrigger>");
        let body = shown["body"].as_str().unwrap();
        assert!(
            body.starts_with("Trigger crashloop fired on a pod-restart event from the k8s-events source.\n\nTime: "),
            "{body}"
        );
        assert!(body.contains("\nObject: web-0 in namespace apps\nReason: BackOff\nMessage: Back-off restarting failed container\nEvent id: "), "{body}");
        assert!(body.contains("The object:\n{\n  \"count\": 3,"), "{body}");

        let shown = request_render(&destination, &Event::new("webhook", "receive", json!({"status": "failed"})));
        assert_eq!(shown["subject"], "[ktrigger] crashloop: receive");
        let body = shown["body"].as_str().unwrap();
        assert!(!body.contains("Object:") && !body.contains("Reason:"), "{body}");
    }

    #[test]
    fn subjects_are_one_line() {
        let destination =
            build(json!({"host": "mx", "from": "a@x.io", "to": "b@x.io", "subject": "a\n  b\r\nc", "html": "<p>{{ event.type }}</p>"}))
                .unwrap();
        let shown = request_render(&destination, &Event::new("cron", "fire", json!({})));
        assert_eq!(shown["subject"], "a b c");
        assert_eq!(shown["html"], "<p>fire</p>");
    }
}
