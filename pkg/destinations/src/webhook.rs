//! The `webhook` destination: an HTTP request per delivery, a CloudEvents 1.0 event by default.
//!
//! Without `body`, `format: cloudevents` sends a structured-mode CloudEvent and `format: raw`
//! sends the event context as JSON. With `body`, the rendered template is the request body; under
//! `format: cloudevents` it goes out in binary content mode (the CloudEvents attributes as `ce-`
//! headers), under `format: raw` as it is.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use hmac::{Hmac, Mac};
use ktrigger_core::DestinationType;
use ktrigger_core::PropertyError;
use ktrigger_core::Template;
use ktrigger_core::{BuildContext, DeliveryError, DeliveryRequest, Destination, Receipt};
use ktrigger_core::{Secret, SecretRef};
use ktrigger_core::{TriggerId, rfc3339, stable_id};
use percent_encoding::{AsciiSet, CONTROLS, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::http;

/// Header carrying the delivery id, stable across the retries of a delivery.
pub const DELIVERY_ID_HEADER: &str = "x-ktrigger-delivery-id";
/// Header carrying the delivery id as the IETF Idempotency-Key, so receivers can drop repeats.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// Default header of the HMAC signature.
pub const DEFAULT_SIGNATURE_HEADER: &str = "X-Ktrigger-Signature-256";

/// Content type of a structured-mode CloudEvent.
pub const CLOUDEVENTS_CONTENT_TYPE: &str = "application/cloudevents+json; charset=utf-8";
/// Content type of a batch of structured-mode CloudEvents.
pub const CLOUDEVENTS_BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json; charset=utf-8";

/// Characters escaped in each segment of the CloudEvents `source` (all but RFC 3986 unreserved).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Characters escaped in `ce-` header values (CloudEvents HTTP binding 3.1.3.2); non-ASCII too.
const CE_HEADER: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// Sends an HTTP request per delivery: a CloudEvents 1.0 JSON event by default, or a custom body
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookProperties {
    /// http or https URL the request goes to
    url: String,
    /// HTTP method; default POST
    #[serde(default)]
    method: Option<String>,
    /// Map of header name to a literal value or a secret reference {env: VAR} / {file: PATH} /
    /// {secretKeyRef: {name, key}}; secret values are never logged
    #[serde(default)]
    headers: BTreeMap<String, HeaderSpec>,
    /// `cloudevents` (default): a structured CloudEvent, or binary mode when `body` is given;
    /// `raw`: the event context as JSON, or `body` as it is
    #[serde(default)]
    format: Format,
    /// Template of the request body over object, oldObject, event, context, now
    #[serde(default)]
    body: Option<String>,
    /// Content-Type of `body` or of the raw context; default application/json
    #[serde(default)]
    content_type: Option<String>,
    /// `{secretFrom: <secret reference>, header: X-Ktrigger-Signature-256}`: adds
    /// `sha256=<hex HMAC-SHA256 of the body>` under that header
    #[serde(default)]
    signature: Option<SignatureProperties>,
}

/// How the request body is made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Format {
    #[default]
    Cloudevents,
    Raw,
}

/// A header value: a literal, or a reference to a secret.
#[derive(Debug, Deserialize)]
#[serde(try_from = "Value")]
enum HeaderSpec {
    Literal(String),
    Secret(SecretRef),
}

impl JsonSchema for HeaderSpec {
    fn schema_name() -> Cow<'static, str> {
        "HeaderSpec".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        json_schema!({"anyOf": [{"type": "string"}, generator.subschema_for::<SecretRef>()]})
    }
}

impl TryFrom<Value> for HeaderSpec {
    type Error = String;

    fn try_from(value: Value) -> Result<Self, String> {
        match value {
            Value::String(text) => Ok(HeaderSpec::Literal(text)),
            Value::Object(_) => serde_json::from_value(value).map(HeaderSpec::Secret).map_err(|e| e.to_string()),
            _ => Err("expected a string or a secret reference {env}, {file} or {secretKeyRef}".into()),
        }
    }
}

/// An HMAC-SHA256 signature of the body.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SignatureProperties {
    /// The shared key.
    secret_from: SecretRef,
    /// Header carrying the signature; default X-Ktrigger-Signature-256.
    #[serde(default)]
    header: Option<String>,
}

/// Builds `webhook` destinations.
#[derive(Clone, Default)]
pub struct WebhookFactory {
    client: Option<reqwest::Client>,
}

impl WebhookFactory {
    /// Destinations that use the process-wide [`http::shared_client`].
    pub fn new() -> Self {
        WebhookFactory { client: None }
    }

    /// Destinations that use `client` (e.g. one with its own timeout).
    pub fn with_client(client: reqwest::Client) -> Self {
        WebhookFactory { client: Some(client) }
    }
}

impl DestinationType for WebhookFactory {
    type Properties = WebhookProperties;
    const NAME: &'static str = "webhook";
    const EXAMPLE: &'static str = r#"type: webhook
properties:
  url: https://hooks.example.com/ktrigger
  headers:
    Authorization: {env: HOOK_TOKEN}
  signature:
    secretFrom: {file: /var/run/secrets/hook/hmac}
"#;

    fn build(&self, props: WebhookProperties, context: &BuildContext) -> Result<Arc<dyn Destination>, PropertyError> {
        let client = http::client_or_shared(self.client.as_ref())?;
        Ok(Arc::new(Webhook::new(props, context, client)?))
    }
}

/// The HMAC signature added to each request.
struct Signature {
    header: HeaderName,
    key: Secret,
}

/// A built `webhook` destination.
struct Webhook {
    url: Url,
    method: Method,
    headers: HeaderMap,
    secrets: Vec<Secret>,
    format: Format,
    body: Option<Template>,
    content_type: HeaderValue,
    signature: Option<Signature>,
    source: String,
    client: reqwest::Client,
}

impl Webhook {
    fn new(props: WebhookProperties, context: &BuildContext, client: reqwest::Client) -> Result<Self, PropertyError> {
        let url = Url::parse(&props.url).map_err(|e| PropertyError::new("url", format!("not a valid URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(PropertyError::new("url", format!("the scheme must be http or https, not {}", url.scheme())));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(PropertyError::new("url", "the URL has no host"));
        }
        let method = match &props.method {
            None => Method::POST,
            Some(name) => Method::from_bytes(name.to_ascii_uppercase().as_bytes())
                .map_err(|_| PropertyError::new("method", format!("{name:?} is not an HTTP method")))?,
        };

        let mut headers = HeaderMap::new();
        let mut secrets = Vec::new();
        for (name, spec) in &props.headers {
            let at = format!("headers.{name}");
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| PropertyError::new(&at, "not a valid header name"))?;
            if header == CONTENT_TYPE {
                return Err(PropertyError::new(&at, "set the content type with properties.contentType"));
            }
            if header == CONTENT_LENGTH || header == HOST {
                return Err(PropertyError::new(&at, "this header is set by the HTTP client"));
            }
            let value = match spec {
                HeaderSpec::Literal(text) => {
                    HeaderValue::from_str(text).map_err(|_| PropertyError::new(&at, "not a valid header value"))?
                }
                HeaderSpec::Secret(reference) => {
                    let secret = reference.resolve(&context.secrets, &at)?;
                    let mut value = HeaderValue::from_str(secret.expose())
                        .map_err(|_| PropertyError::new(&at, "the secret's value is not a valid header value"))?;
                    value.set_sensitive(true);
                    secrets.push(secret);
                    value
                }
            };
            headers.append(header, value);
        }

        let body =
            props.body.as_deref().map(Template::compile).transpose().map_err(|e| PropertyError::new("body", e))?;
        if props.content_type.is_some() && body.is_none() && props.format == Format::Cloudevents {
            return Err(PropertyError::new(
                "contentType",
                "only applies with properties.body or format: raw \
                        (a structured CloudEvent is always application/cloudevents+json)",
            ));
        }
        let content_type = HeaderValue::from_str(props.content_type.as_deref().unwrap_or("application/json"))
            .map_err(|_| PropertyError::new("contentType", "not a valid header value"))?;

        let signature = match props.signature {
            None => None,
            Some(signature) => {
                let key = signature.secret_from.resolve(&context.secrets, "signature.secretFrom")?;
                let name = signature.header.as_deref().unwrap_or(DEFAULT_SIGNATURE_HEADER);
                let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    PropertyError::new("signature.header", format!("{name:?} is not a valid header name"))
                })?;
                Some(Signature { header, key })
            }
        };

        Ok(Webhook {
            url,
            method,
            headers,
            secrets,
            format: props.format,
            body,
            content_type,
            signature,
            source: cloudevents_source(&context.trigger),
            client,
        })
    }

    /// The headers and body of the request for `request`.
    fn prepare(&self, request: &DeliveryRequest<'_>) -> Result<(HeaderMap, Vec<u8>), DeliveryError> {
        let mut headers = self.headers.clone();
        headers.insert(HeaderName::from_static(DELIVERY_ID_HEADER), header_value(request.id)?);
        // The delivery id is deterministic, the same across retries, restarts and failover.
        headers.insert(HeaderName::from_static(IDEMPOTENCY_KEY_HEADER), header_value(request.id)?);
        let body = match (&self.body, self.format) {
            (None, Format::Cloudevents) => {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static(CLOUDEVENTS_CONTENT_TYPE));
                json_bytes(&self.structured_event(request))?
            }
            (None, Format::Raw) => {
                headers.insert(CONTENT_TYPE, self.content_type.clone());
                json_bytes(&request.event.context_value(&request.trigger.trigger, Utc::now()))?
            }
            (Some(template), format) => {
                let body = template
                    .render(&request.scope())
                    .map_err(|e| DeliveryError::permanent(format!("properties.body: {e}")))?;
                headers.insert(CONTENT_TYPE, self.content_type.clone());
                if format == Format::Cloudevents {
                    for (name, value) in self.attributes(request) {
                        // Attribute names are fixed lowercase words, so `ce-<name>` is a valid header name.
                        let header = HeaderName::try_from(format!("ce-{name}")).expect("valid CloudEvents header");
                        headers.insert(header, header_value(&utf8_percent_encode(&value, CE_HEADER).to_string())?);
                    }
                }
                body.into_bytes()
            }
        };
        if let Some(signature) = &self.signature {
            headers.insert(signature.header.clone(), header_value(&sign(signature.key.expose(), &body))?);
        }
        Ok((headers, body))
    }

    /// The headers and body of one request for several deliveries: a JSON array of what each
    /// would send (structured CloudEvents as `application/cloudevents-batch+json`; raw contexts
    /// and rendered bodies, JSON or else strings, as the configured content type). The delivery
    /// id headers carry an id derived from every delivery's id.
    fn prepare_batch(&self, requests: &[DeliveryRequest<'_>]) -> Result<(HeaderMap, Vec<u8>), DeliveryError> {
        let mut headers = self.headers.clone();
        let ids: Vec<&str> = requests.iter().map(|request| request.id).collect();
        let id = stable_id(&ids);
        headers.insert(HeaderName::from_static(DELIVERY_ID_HEADER), header_value(&id)?);
        headers.insert(HeaderName::from_static(IDEMPOTENCY_KEY_HEADER), header_value(&id)?);
        let mut items = Vec::with_capacity(requests.len());
        for request in requests {
            items.push(match (&self.body, self.format) {
                (None, Format::Cloudevents) => self.structured_event(request),
                (None, Format::Raw) => request.event.context_value(&request.trigger.trigger, Utc::now()),
                (Some(template), _) => {
                    let body = template
                        .render(&request.scope())
                        .map_err(|e| DeliveryError::permanent(format!("properties.body: {e}")))?;
                    serde_json::from_str(&body).unwrap_or(Value::String(body))
                }
            });
        }
        let content_type = match (&self.body, self.format) {
            (None, Format::Cloudevents) => HeaderValue::from_static(CLOUDEVENTS_BATCH_CONTENT_TYPE),
            _ => self.content_type.clone(),
        };
        headers.insert(CONTENT_TYPE, content_type);
        let body = json_bytes(&Value::Array(items))?;
        if let Some(signature) = &self.signature {
            headers.insert(signature.header.clone(), header_value(&sign(signature.key.expose(), &body))?);
        }
        Ok((headers, body))
    }

    /// The CloudEvents context attributes of `request`, `datacontenttype` excluded.
    fn attributes(&self, request: &DeliveryRequest<'_>) -> Vec<(&'static str, String)> {
        let event = request.event;
        let mut attributes = vec![
            ("specversion", "1.0".to_string()),
            ("id", request.id.to_string()),
            ("source", self.source.clone()),
            ("type", format!("dev.ktrigger.{}", event.meta.event_type)),
            ("time", rfc3339(event.meta.time)),
        ];
        if let Some(name) = event.object.pointer("/metadata/name").and_then(Value::as_str) {
            attributes.push(("subject", name.to_string()));
        }
        attributes
    }

    /// A structured-mode CloudEvent: the attributes, and `{object, oldObject?, event}` as data.
    fn structured_event(&self, request: &DeliveryRequest<'_>) -> Value {
        let mut event = serde_json::Map::new();
        for (name, value) in self.attributes(request) {
            event.insert(name.into(), Value::String(value));
        }
        event.insert("datacontenttype".into(), json!("application/json"));
        let mut data = json!({
            "object": request.event.object,
            "event": request.event.event_value(&request.trigger.trigger),
        });
        if let Some(old) = &request.event.old_object {
            data["oldObject"] = old.clone();
        }
        event.insert("data".into(), data);
        Value::Object(event)
    }

    /// The values of all secrets this destination sends, for scrubbing failure reasons.
    fn secret_values(&self) -> Vec<&str> {
        self.secrets.iter().chain(self.signature.iter().map(|s| &s.key)).map(Secret::expose).collect()
    }
}

/// The URL as safe to show: a password in it is replaced by `<redacted>`.
fn display_url(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("<redacted>"));
    }
    shown.to_string()
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("method", &self.method)
            .field("url", &display_url(&self.url))
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("format", &self.format)
            .field("body", &self.body.is_some())
            .field("signature", &self.signature.as_ref().map(|s| &s.header))
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Destination for Webhook {
    fn render(&self, request: &DeliveryRequest<'_>) -> Result<Value, DeliveryError> {
        let (headers, body) = self.prepare(request)?;
        let mut shown = serde_json::Map::new();
        for (name, value) in &headers {
            let text = if value.is_sensitive() {
                "<redacted>".to_string()
            } else {
                value.to_str().unwrap_or("<binary>").into()
            };
            shown.insert(name.to_string(), Value::String(text));
        }
        let body = serde_json::from_slice::<Value>(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        Ok(json!({
            "method": self.method.as_str(),
            "url": display_url(&self.url),
            "headers": shown,
            "body": body,
        }))
    }

    async fn deliver(&self, request: &DeliveryRequest<'_>) -> Result<Receipt, DeliveryError> {
        let (headers, body) = self.prepare(request)?;
        let sent = self.client.request(self.method.clone(), self.url.clone()).headers(headers).body(body);
        http::send(sent).await.map_err(|e| http::redact(e, &self.secret_values()))
    }

    fn batches(&self) -> bool {
        true
    }

    async fn deliver_batch(&self, requests: &[DeliveryRequest<'_>]) -> Result<Receipt, DeliveryError> {
        let (headers, body) = self.prepare_batch(requests)?;
        let sent = self.client.request(self.method.clone(), self.url.clone()).headers(headers).body(body);
        http::send(sent).await.map_err(|e| http::redact(e, &self.secret_values()))
    }
}

/// `ktrigger/<namespace>/<service>/<trigger>` (namespace left out when empty), each segment
/// percent-encoded so that the whole is a URI-reference.
pub fn cloudevents_source(trigger: &TriggerId) -> String {
    let mut source = String::from("ktrigger");
    for segment in [&trigger.namespace, &trigger.service, &trigger.trigger] {
        if !segment.is_empty() {
            source.push('/');
            source.extend(utf8_percent_encode(segment, SEGMENT));
        }
    }
    source
}

/// `sha256=<hex HMAC-SHA256 of body under key>`.
pub fn sign(key: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn header_value(text: &str) -> Result<HeaderValue, DeliveryError> {
    HeaderValue::from_str(text).map_err(|_| DeliveryError::permanent(format!("not a valid header value: {text:?}")))
}

fn json_bytes(value: &Value) -> Result<Vec<u8>, DeliveryError> {
    serde_json::to_vec(value).map_err(|e| DeliveryError::permanent(format!("cannot encode the body: {e}")))
}

#[cfg(test)]
mod tests;
