//! The `kagent` destination: asks a kagent agent to act on the event, over A2A JSON-RPC.
//!
//! Per delivery: optionally `POST {baseUrl}/api/sessions` to open a kagent session, then an A2A
//! `message/send` JSON-RPC 2.0 request carrying the rendered prompt (in that session's context)
//! to the agent's endpoint. The answer is a Task or a Message; JSON-RPC errors and failed or
//! rejected tasks are failed deliveries. A retry of the same delivery reuses its session and its
//! message id, so the agent can tell a retry from a new request.
//!
//! Agent runs take minutes: give the destination a long `timeout:` (the engine's per-attempt
//! limit, 30s by default), e.g. `timeout: 10m`; the HTTP client itself sets no overall limit.
//! With `wait: false` the agent is asked to answer as soon as the task is accepted.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ktrigger_core::DestinationType;
use ktrigger_core::PropertyError;
use ktrigger_core::Template;
use ktrigger_core::{BuildContext, DeliveryError, DeliveryRequest, Destination, Receipt};
use ktrigger_core::{Secret, SecretRef};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Response, Url};
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};

use crate::{http, khook};

/// Where kagent's controller listens inside a cluster with the default installation.
pub const DEFAULT_BASE_URL: &str = "http://kagent-controller.kagent:8083";

/// The user sessions belong to by default.
pub const DEFAULT_USER_ID: &str = "ktrigger";

/// Largest response read from kagent; an agent's task with its history fits easily.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// How many deliveries' sessions are remembered for their retries.
const SESSION_CACHE: usize = 1024;

/// Asks a kagent agent to act: opens a session and sends the rendered prompt as an A2A message/send
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("required" = ["agentRef", "prompt"]))]
pub struct KagentProperties {
    /// khook's obsolete agent id, read only to refuse it with a hint (the schema leaves it out).
    #[serde(default)]
    #[schemars(skip)]
    agent_id: Option<IgnoredAny>,
    /// Not a property (the call's time limit is the destination's `timeout:`), read only to
    /// refuse it with a hint.
    #[serde(default)]
    #[schemars(skip)]
    timeout: Option<IgnoredAny>,
    /// {name, namespace} of the kagent Agent; namespace defaults to the TriggerService's
    // Optional for serde only, so that khook's `agentId` without it gets its hint; the schema
    // requires it.
    #[serde(default)]
    agent_ref: Option<AgentRef>,
    /// Template of the message text over object, oldObject, event, context, now; khook placeholders
    /// ({{.ResourceName}}, {{.Namespace}}, {{.EventType}}, {{.Reason}}, {{.Message}},
    /// {{.EventMessage}}, {{.Timestamp}}, {{.EventTime}}) are converted
    prompt: String,
    /// URL of the kagent controller; default `http://kagent-controller.kagent:8083`
    #[serde(default)]
    base_url: Option<String>,
    /// kagent user the sessions belong to (user_id and X-User-Id); default ktrigger
    #[serde(default)]
    user_id: Option<String>,
    /// `legacy` (default): {baseUrl}/api/a2a/{namespace}/{name}/ as khook calls it; `standard`: the
    /// same without the trailing slash
    #[serde(default)]
    a2a_path: Option<A2aPath>,
    /// Full A2A endpoint URL instead of a2aPath; {namespace} and {name} are replaced by agentRef's
    #[serde(default)]
    a2a_url: Option<String>,
    /// Open a kagent session (POST {baseUrl}/api/sessions) per delivery and send the message in its
    /// context; default true
    #[serde(default = "yes")]
    create_session: bool,
    /// true (default): wait until the agent's task ends; false: ask for an answer as soon as the
    /// task is accepted (A2A blocking: false)
    #[serde(default = "yes")]
    wait: bool,
    /// Map of header name to a secret reference {env: VAR} / {file: PATH} / {secretKeyRef: {name,
    /// key}}, sent with every request (e.g. Authorization); never logged
    #[serde(default)]
    headers_from: BTreeMap<String, SecretRef>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct AgentRef {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

/// How the A2A endpoint is derived from the base URL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum A2aPath {
    /// `{base}/api/a2a/{namespace}/{name}/`, as khook calls it.
    #[default]
    Legacy,
    /// `{base}/api/a2a/{namespace}/{name}`.
    Standard,
}

/// Builds `kagent` destinations.
#[derive(Clone, Default)]
pub struct KagentFactory {
    client: Option<reqwest::Client>,
}

impl KagentFactory {
    /// Destinations that use the process-wide [`http::shared_client`] (no overall time limit).
    pub fn new() -> Self {
        KagentFactory { client: None }
    }

    /// Destinations that use `client`.
    pub fn with_client(client: reqwest::Client) -> Self {
        KagentFactory { client: Some(client) }
    }
}

impl DestinationType for KagentFactory {
    type Properties = KagentProperties;
    const NAME: &'static str = "kagent";
    const EXAMPLE: &'static str = r#"type: kagent
timeout: 10m               # agent runs are slow: the default per-attempt timeout is 30s
retry: {maxAttempts: 3, backoff: 30s}
properties:
  agentRef: {name: k8s-agent, namespace: kagent}
  prompt: |
    Pod {{.ResourceName}} in {{.Namespace}} restarted ({{.Reason}}): {{.Message}}.
    It has restarted {{ object.count }} times. Diagnose it and propose a fix.
"#;

    fn build(&self, props: KagentProperties, context: &BuildContext) -> Result<Arc<dyn Destination>, PropertyError> {
        if props.agent_id.is_some() {
            return Err(PropertyError::new(
                "agentId",
                "khook's obsolete agentId is not supported; use agentRef: {name: <agent>, namespace: <namespace>}",
            ));
        }
        if props.timeout.is_some() {
            return Err(PropertyError::new(
                "timeout",
                "the time limit of an agent call is the destination's own `timeout:` (beside `properties:`), \
                 e.g. timeout: 10m",
            ));
        }
        let client = http::client_or_shared(self.client.as_ref())?;
        Ok(Arc::new(Kagent::new(props, context, client)?))
    }
}

/// A built `kagent` destination.
struct Kagent {
    /// `namespace/name`, kagent's agent reference.
    agent: String,
    /// `POST` target opening a session, when sessions are created.
    session_url: Option<Url>,
    a2a_url: Url,
    user_id: String,
    prompt: Template,
    wait: bool,
    headers: HeaderMap,
    secrets: Vec<Secret>,
    trigger: String,
    client: reqwest::Client,
    /// Sessions opened by deliveries that have not succeeded yet, reused by their retries.
    sessions: Mutex<HashMap<String, String>>,
}

impl Kagent {
    fn new(props: KagentProperties, context: &BuildContext, client: reqwest::Client) -> Result<Self, PropertyError> {
        let agent_ref = props.agent_ref.as_ref().ok_or_else(|| PropertyError::whole("missing field `agentRef`"))?;
        let name = agent_ref.name.trim();
        check_name(name).map_err(|e| PropertyError::new("agentRef.name", e))?;
        let namespace = match agent_ref.namespace.as_deref().map(str::trim) {
            Some(namespace) => namespace,
            None if !context.trigger.namespace.is_empty() => context.trigger.namespace.as_str(),
            None => {
                return Err(PropertyError::new(
                    "agentRef.namespace",
                    "required when the TriggerService has no namespace",
                ));
            }
        };
        check_label(namespace).map_err(|e| PropertyError::new("agentRef.namespace", e))?;

        let base = props.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL).trim_end_matches('/');
        let base_url = http_url(base).map_err(|e| PropertyError::new("baseUrl", e))?;
        if base_url.query().is_some() || base_url.fragment().is_some() {
            return Err(PropertyError::new("baseUrl", "must not have a query or a fragment"));
        }
        let base = base_url.as_str().trim_end_matches('/');

        let a2a_url = match (&props.a2a_url, props.a2a_path) {
            (Some(_), Some(_)) => return Err(PropertyError::new("a2aUrl", "give a2aUrl or a2aPath, not both")),
            (Some(url), None) => http_url(&url.replace("{namespace}", namespace).replace("{name}", name))
                .map_err(|e| PropertyError::new("a2aUrl", e))?,
            (None, path) => {
                let slash = if path.unwrap_or_default() == A2aPath::Legacy { "/" } else { "" };
                http_url(&format!("{base}/api/a2a/{namespace}/{name}{slash}"))
                    .map_err(|e| PropertyError::new("baseUrl", e))?
            }
        };

        let user_id = props.user_id.as_deref().unwrap_or(DEFAULT_USER_ID).trim().to_string();
        if user_id.is_empty() {
            return Err(PropertyError::new("userId", "must not be empty"));
        }
        let user_header = HeaderValue::from_str(&user_id)
            .map_err(|_| PropertyError::new("userId", "must be printable ASCII (it is sent as a header)"))?;

        let session_url = if props.create_session {
            let mut url = http_url(&format!("{base}/api/sessions")).map_err(|e| PropertyError::new("baseUrl", e))?;
            url.query_pairs_mut().append_pair("user_id", &user_id);
            Some(url)
        } else {
            None
        };

        if props.prompt.trim().is_empty() {
            return Err(PropertyError::new("prompt", "must not be empty"));
        }
        let source = khook::convert(&props.prompt).map_err(|e| PropertyError::new("prompt", e))?;
        let prompt = Template::compile(&source).map_err(|e| PropertyError::new("prompt", e))?;

        let mut headers = HeaderMap::new();
        headers.insert(HeaderName::from_static("x-user-id"), user_header);
        let mut secrets = Vec::new();
        for (name, reference) in &props.headers_from {
            let at = format!("headersFrom.{name}");
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| PropertyError::new(&at, "not a valid header name"))?;
            if header == CONTENT_TYPE || header == CONTENT_LENGTH || header == HOST {
                return Err(PropertyError::new(&at, "this header is set by ktrigger"));
            }
            let secret = reference.resolve(&context.secrets, &at)?;
            let mut value = HeaderValue::from_str(secret.expose())
                .map_err(|_| PropertyError::new(&at, "the secret's value is not a valid header value"))?;
            value.set_sensitive(true);
            headers.insert(header, value);
            secrets.push(secret);
        }

        Ok(Kagent {
            agent: format!("{namespace}/{name}"),
            session_url,
            a2a_url,
            user_id,
            prompt,
            wait: props.wait,
            headers,
            secrets,
            trigger: context.trigger.trigger.clone(),
            client,
            sessions: Mutex::new(HashMap::new()),
        })
    }

    fn render_prompt(&self, request: &DeliveryRequest<'_>) -> Result<String, DeliveryError> {
        self.prompt.render(&request.scope()).map_err(|e| DeliveryError::permanent(format!("properties.prompt: {e}")))
    }

    /// The body of `POST /api/sessions` for `request`.
    fn session_body(&self, request: &DeliveryRequest<'_>) -> Value {
        let short: String = request.id.chars().filter(char::is_ascii_alphanumeric).take(8).collect();
        json!({
            "agent_ref": self.agent,
            "user_id": self.user_id,
            "name": format!("ktrigger-{}-{short}", self.trigger),
        })
    }

    /// The A2A `message/send` request for `request`, in the session `context_id` when there is one.
    fn message_request(&self, request: &DeliveryRequest<'_>, text: String, context_id: Option<&str>) -> Value {
        let mut message = json!({
            "kind": "message",
            "messageId": message_id(request.id),
            "role": "user",
            "parts": [{"kind": "text", "text": text}],
        });
        if let Some(context_id) = context_id {
            message["contextId"] = json!(context_id);
        }
        let mut params = json!({ "message": message });
        if !self.wait {
            params["configuration"] = json!({"blocking": false});
        }
        json!({"jsonrpc": "2.0", "id": request.id, "method": "message/send", "params": params})
    }

    /// The session of this delivery: the one an earlier attempt opened, or a new one.
    async fn session(&self, request: &DeliveryRequest<'_>, url: &Url) -> Result<String, DeliveryError> {
        if let Some(id) = self.sessions.lock().expect("session cache").get(request.id) {
            return Ok(id.clone());
        }
        let sent = self.client.post(url.clone()).headers(self.headers.clone()).json(&self.session_body(request));
        let sent = http::traced(sent);
        let response = sent.send().await.map_err(|e| prefixed("creating the session", http::classify_error(&e)))?;
        let response = http::check(response).await.map_err(|e| prefixed("creating the session", e))?;
        let body = read_json(response).await.map_err(|e| prefixed("creating the session", e))?;
        if body.get("error").and_then(Value::as_bool) == Some(true) {
            let message = body.get("message").and_then(Value::as_str).unwrap_or("no message");
            return Err(DeliveryError::permanent(format!(
                "creating the session: kagent says {}",
                http::snippet(message)
            )));
        }
        let id = [body.pointer("/data/id"), body.get("id")]
            .into_iter()
            .flatten()
            .find_map(|id| match id {
                Value::String(id) if !id.is_empty() => Some(id.clone()),
                Value::Number(id) => Some(id.to_string()),
                _ => None,
            })
            .ok_or_else(|| {
                DeliveryError::permanent(format!(
                    "creating the session: the answer has no session id (data.id): {}",
                    http::snippet(&body.to_string())
                ))
            })?;
        let mut sessions = self.sessions.lock().expect("session cache");
        if sessions.len() >= SESSION_CACHE {
            sessions.clear();
        }
        sessions.insert(request.id.to_string(), id.clone());
        Ok(id)
    }

    async fn attempt(&self, request: &DeliveryRequest<'_>) -> Result<Receipt, DeliveryError> {
        let text = self.render_prompt(request)?;
        let session = match &self.session_url {
            Some(url) => Some(self.session(request, url).await?),
            None => None,
        };
        let body = self.message_request(request, text, session.as_deref());
        let sent = http::traced(self.client.post(self.a2a_url.clone()).headers(self.headers.clone()).json(&body));
        let response = sent.send().await.map_err(|e| http::classify_error(&e))?;
        let response = http::check(response).await?;
        let answer = read_json(response).await?;
        let mut detail = interpret(&answer)?;
        if let Some(session) = &session {
            detail.push_str(&format!(", session {session}"));
        }
        Ok(Receipt { detail: Some(detail) })
    }

    fn forget_session(&self, delivery: &str) {
        self.sessions.lock().expect("session cache").remove(delivery);
    }

    fn secret_values(&self) -> Vec<&str> {
        self.secrets.iter().map(Secret::expose).collect()
    }
}

impl fmt::Debug for Kagent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kagent")
            .field("agent", &self.agent)
            .field("a2a_url", &self.a2a_url.as_str())
            .field("session_url", &self.session_url.as_ref().map(Url::as_str))
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Destination for Kagent {
    fn render(&self, request: &DeliveryRequest<'_>) -> Result<Value, DeliveryError> {
        let text = self.render_prompt(request)?;
        let headers: Vec<&str> = self.headers.keys().map(HeaderName::as_str).collect();
        let session = self.session_url.as_ref().map(|url| {
            json!({"method": "POST", "url": url.as_str(), "headers": headers, "body": self.session_body(request)})
        });
        let context_id = session.as_ref().map(|_| "<id of the new session>");
        Ok(json!({
            "agent": self.agent,
            "session": session,
            "message": {
                "method": "POST",
                "url": self.a2a_url.as_str(),
                "headers": headers,
                "body": self.message_request(request, text, context_id),
            },
        }))
    }

    async fn deliver(&self, request: &DeliveryRequest<'_>) -> Result<Receipt, DeliveryError> {
        let outcome = self.attempt(request).await.map_err(|e| http::redact(e, &self.secret_values()));
        if !matches!(outcome, Err(DeliveryError::Transient { .. })) {
            self.forget_session(request.id);
        }
        outcome
    }
}

/// What the agent's JSON-RPC answer means: a receipt detail such as `task 42 (completed)`, or
/// the failure it reports.
pub fn interpret(answer: &Value) -> Result<String, DeliveryError> {
    let Some(fields) = answer.as_object() else {
        return Err(DeliveryError::permanent(format!(
            "not a JSON-RPC response: {}",
            http::snippet(&answer.to_string())
        )));
    };
    if let Some(error) = fields.get("error").filter(|e| !e.is_null()) {
        return Err(rpc_error(error));
    }
    let Some(result) = fields.get("result").filter(|r| r.is_object()) else {
        return Err(DeliveryError::permanent(format!(
            "a JSON-RPC response without result or error: {}",
            http::snippet(&answer.to_string())
        )));
    };
    let kind = result.get("kind").and_then(Value::as_str);
    let id = |field: &str| result.get(field).and_then(Value::as_str).unwrap_or("<no id>").to_string();
    if kind == Some("message") || (kind.is_none() && result.get("messageId").is_some()) {
        return Ok(format!("message {}", id("messageId")));
    }
    if kind == Some("task") || (kind.is_none() && result.get("status").is_some()) {
        let task = id("id");
        let state = result.pointer("/status/state").and_then(Value::as_str).map(task_state).unwrap_or_default();
        let state = if state.is_empty() { "unknown".to_string() } else { state };
        let said = status_text(result);
        let why = if said.is_empty() { String::new() } else { format!(": {}", http::snippet(&said)) };
        return match state.as_str() {
            "failed" => Err(DeliveryError::transient(format!("task {task} failed{why}"))),
            "rejected" | "canceled" => Err(DeliveryError::permanent(format!("task {task} {state}{why}"))),
            _ => Ok(format!("task {task} ({state})")),
        };
    }
    Err(DeliveryError::permanent(format!(
        "the result is neither a task nor a message: {}",
        http::snippet(&result.to_string())
    )))
}

/// A task state in A2A 0.3 spelling: `TASK_STATE_INPUT_REQUIRED` (A2A 1.0) becomes `input-required`.
fn task_state(state: &str) -> String {
    let state = state.strip_prefix("TASK_STATE_").unwrap_or(state);
    state.to_ascii_lowercase().replace('_', "-")
}

/// The text parts of the task's status message, joined.
fn status_text(task: &Value) -> String {
    let parts = task.pointer("/status/message/parts").and_then(Value::as_array);
    parts
        .into_iter()
        .flatten()
        .filter_map(|part| part.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A JSON-RPC error object as a failed delivery: only an internal error (-32603) may pass on retry.
fn rpc_error(error: &Value) -> DeliveryError {
    let code = error.get("code").and_then(Value::as_i64);
    let message = error.get("message").and_then(Value::as_str).unwrap_or("");
    let mut reason = match code {
        Some(code) => format!("JSON-RPC error {code}"),
        None => "JSON-RPC error".to_string(),
    };
    if let Some(name) = code.and_then(rpc_error_name) {
        reason.push_str(&format!(" ({name})"));
    }
    if !message.is_empty() {
        reason.push_str(&format!(": {}", http::snippet(message)));
    }
    if let Some(data) = error.get("data").filter(|d| !d.is_null()) {
        let data = data.as_str().map_or_else(|| data.to_string(), str::to_string);
        reason.push_str(&format!(" (data: {})", http::snippet(&data)));
    }
    if code == Some(-32603) { DeliveryError::transient(reason) } else { DeliveryError::permanent(reason) }
}

/// The JSON-RPC 2.0 and A2A names of error codes.
fn rpc_error_name(code: i64) -> Option<&'static str> {
    Some(match code {
        -32700 => "parse error",
        -32600 => "invalid request",
        -32601 => "method not found",
        -32602 => "invalid params",
        -32603 => "internal error",
        -32001 => "task not found",
        -32002 => "task not cancelable",
        -32003 => "push notifications not supported",
        -32004 => "unsupported operation",
        -32005 => "content type not supported",
        -32006 => "invalid agent response",
        -32007 => "extended agent card not configured",
        _ => return None,
    })
}

/// The A2A message id of a delivery: the same for all its attempts.
pub fn message_id(delivery: &str) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, format!("ktrigger:delivery:{delivery}").as_bytes()).to_string()
}

/// The body of a 2xx response as JSON, read up to [`MAX_RESPONSE_BYTES`].
async fn read_json(mut response: Response) -> Result<Value, DeliveryError> {
    let too_large = || {
        DeliveryError::permanent(format!(
            "the response is larger than {} MiB (the agent may have acted)",
            MAX_RESPONSE_BYTES / (1024 * 1024)
        ))
    };
    if response.content_length().is_some_and(|length| length > MAX_RESPONSE_BYTES as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| http::classify_error(&e))? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| {
        DeliveryError::permanent(format!(
            "the response is not JSON ({e}): {}",
            http::snippet(&String::from_utf8_lossy(&body))
        ))
    })
}

fn prefixed(what: &str, error: DeliveryError) -> DeliveryError {
    match error {
        DeliveryError::Transient { reason, retry_after } => {
            DeliveryError::Transient { reason: format!("{what}: {reason}"), retry_after }
        }
        DeliveryError::Permanent { reason } => DeliveryError::permanent(format!("{what}: {reason}")),
    }
}

fn http_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("not a valid URL ({e}): {text}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("the scheme must be http or https, not {}", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".into());
    }
    Ok(url)
}

/// A Kubernetes object name (RFC 1123 subdomain).
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 || !name.split('.').all(is_label) {
        return Err(format!("{name:?} is not a valid Kubernetes name (lowercase letters, digits, '-' and '.')"));
    }
    Ok(())
}

/// A Kubernetes namespace (RFC 1123 label).
fn check_label(name: &str) -> Result<(), String> {
    if !is_label(name) {
        return Err(format!("{name:?} is not a valid namespace (lowercase letters, digits and '-', at most 63)"));
    }
    Ok(())
}

fn is_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktrigger_core::{DestinationFactory, Event, TriggerId, TypedDestination, parse_properties};

    fn trigger(namespace: &str) -> TriggerId {
        TriggerId { namespace: namespace.into(), service: "restart-doctor".into(), trigger: "crashloop".into() }
    }

    fn build(properties: Value) -> Result<Arc<dyn Destination>, String> {
        let context = BuildContext::new(trigger("apps"));
        TypedDestination::new(KagentFactory::new()).build(&properties, &context).map_err(|e| e.to_string())
    }

    fn kagent(properties: Value) -> Kagent {
        let props = parse_properties(&properties).unwrap();
        Kagent::new(props, &BuildContext::new(trigger("apps")), http::shared_client().unwrap()).unwrap()
    }

    #[test]
    fn endpoints_follow_the_agent_ref_and_the_path_style() {
        let legacy = kagent(json!({"agentRef": {"name": "k8s-agent", "namespace": "kagent"}, "prompt": "hi"}));
        assert_eq!(legacy.a2a_url.as_str(), "http://kagent-controller.kagent:8083/api/a2a/kagent/k8s-agent/");
        assert_eq!(
            legacy.session_url.as_ref().unwrap().as_str(),
            "http://kagent-controller.kagent:8083/api/sessions?user_id=ktrigger"
        );
        assert_eq!(legacy.agent, "kagent/k8s-agent");

        let standard = kagent(json!({
            "agentRef": {"name": "k8s-agent"}, "prompt": "hi", "a2aPath": "standard",
            "baseUrl": "https://kagent.example.com/", "userId": "ops@example.com", "createSession": false,
        }));
        // The namespace defaults to the TriggerService's.
        assert_eq!(standard.a2a_url.as_str(), "https://kagent.example.com/api/a2a/apps/k8s-agent");
        assert!(standard.session_url.is_none());

        let custom = kagent(json!({
            "agentRef": {"name": "a", "namespace": "b"}, "prompt": "hi",
            "a2aUrl": "http://gateway:8080/agents/{namespace}/{name}",
        }));
        assert_eq!(custom.a2a_url.as_str(), "http://gateway:8080/agents/b/a");
    }

    #[test]
    fn load_errors_name_the_property() {
        let cases = [
            (json!({"prompt": "hi"}), "missing field `agentRef`"),
            (json!({"agentRef": {"name": "a"}}), "missing field `prompt`"),
            (json!({"agentRef": {"name": "A_b"}, "prompt": "x"}), "properties.agentRef.name: \"A_b\" is not a valid"),
            (json!({"agentRef": {"name": "a", "namespace": "x.y"}, "prompt": "x"}), "properties.agentRef.namespace:"),
            (json!({"agentRef": {"name": "a"}, "prompt": "  "}), "properties.prompt: must not be empty"),
            (
                json!({"agentRef": {"name": "a"}, "prompt": "{{.Pod}}"}),
                "properties.prompt: unknown khook field {{.Pod}}",
            ),
            (
                json!({"agentRef": {"name": "a"}, "prompt": "{{ pod.name }}"}),
                "properties.prompt: unknown variable(s) pod",
            ),
            (json!({"agentRef": {"name": "a"}, "prompt": "x", "baseUrl": "ftp://x"}), "properties.baseUrl: the scheme"),
            (
                json!({"agentRef": {"name": "a"}, "prompt": "x", "a2aPath": "new"}),
                "properties.a2aPath: unknown variant",
            ),
            (
                json!({"agentRef": {"name": "a"}, "prompt": "x", "a2aPath": "legacy", "a2aUrl": "http://x/"}),
                "properties.a2aUrl: give a2aUrl or a2aPath, not both",
            ),
            (json!({"agentRef": {"name": "a"}, "prompt": "x", "userId": ""}), "properties.userId: must not be empty"),
            (json!({"agentRef": {"name": "a"}, "prompt": "x", "timeout": "10m"}), "destination's own `timeout:`"),
            (
                json!({"agentRef": {"name": "a"}, "prompt": "x", "headersFrom": {"Authorization": {"env": "KTRIGGER_TEST_NOPE"}}}),
                "properties.headersFrom.Authorization: environment variable KTRIGGER_TEST_NOPE is not set",
            ),
            (json!({"agentId": "k8s-agent", "prompt": "x"}), "properties.agentId: khook's obsolete agentId"),
        ];
        for (properties, expected) in cases {
            let err = build(properties.clone()).err().unwrap_or_else(|| panic!("{properties} loaded"));
            assert!(err.contains(expected), "{properties}: {err}");
        }
        let context = BuildContext::new(trigger(""));
        let err = TypedDestination::new(KagentFactory::new())
            .build(&json!({"agentRef": {"name": "a"}, "prompt": "x"}), &context)
            .map_err(|e| e.to_string())
            .err()
            .unwrap();
        assert_eq!(err, "properties.agentRef.namespace: required when the TriggerService has no namespace");
    }

    #[test]
    fn renders_the_session_and_the_json_rpc_request() {
        let destination = build(json!({
            "agentRef": {"name": "k8s-agent", "namespace": "kagent"},
            "prompt": "Pod {{.ResourceName}} restarted {{ object.count }} times",
            "wait": false,
        }))
        .unwrap();
        let event = Event::new(
            "k8s-events",
            "create",
            json!({"involvedObject": {"name": "web-0", "namespace": "apps"}, "count": 4}),
        );
        let trigger = trigger("apps");
        let request = DeliveryRequest { id: "d-123", trigger: &trigger, event: &event, attempt: 1 };
        let shown = destination.render(&request).unwrap();
        assert_eq!(
            shown["session"]["body"],
            json!({"agent_ref": "kagent/k8s-agent", "user_id": "ktrigger", "name": "ktrigger-crashloop-d123"})
        );
        let body = &shown["message"]["body"];
        assert_eq!(body["jsonrpc"], "2.0");
        assert_eq!(body["id"], "d-123");
        assert_eq!(body["method"], "message/send");
        let message = &body["params"]["message"];
        assert_eq!(message["kind"], "message");
        assert_eq!(message["role"], "user");
        assert_eq!(message["parts"], json!([{"kind": "text", "text": "Pod web-0 restarted 4 times"}]));
        assert_eq!(message["messageId"], message_id("d-123"));
        assert_eq!(message["contextId"], "<id of the new session>");
        assert_eq!(body["params"]["configuration"], json!({"blocking": false}));
        assert_eq!(shown["message"]["headers"], json!(["x-user-id"]));
    }

    #[test]
    fn message_ids_are_stable_per_delivery() {
        assert_eq!(message_id("a"), message_id("a"));
        assert_ne!(message_id("a"), message_id("b"));
        assert!(uuid::Uuid::parse_str(&message_id("a")).is_ok());
    }

    #[test]
    fn tasks_and_messages_become_receipts() {
        let task = json!({"jsonrpc": "2.0", "id": "1", "result": {"kind": "task", "id": "t-1", "contextId": "c", "status": {"state": "completed"}}});
        assert_eq!(interpret(&task).unwrap(), "task t-1 (completed)");
        let working = json!({"jsonrpc": "2.0", "id": "1", "result": {"id": "t-2", "status": {"state": "TASK_STATE_INPUT_REQUIRED"}}});
        assert_eq!(interpret(&working).unwrap(), "task t-2 (input-required)");
        let message = json!({"jsonrpc": "2.0", "id": "1", "result": {"kind": "message", "messageId": "m-1", "role": "agent", "parts": []}});
        assert_eq!(interpret(&message).unwrap(), "message m-1");
    }

    #[test]
    fn failed_tasks_and_rpc_errors_are_failed_deliveries() {
        let failed = json!({"jsonrpc": "2.0", "id": "1", "result": {"kind": "task", "id": "t-1", "status": {"state": "failed",
            "message": {"kind": "message", "role": "agent", "messageId": "m", "parts": [{"kind": "text", "text": "model quota exceeded"}]}}}});
        assert_eq!(interpret(&failed), Err(DeliveryError::transient("task t-1 failed: model quota exceeded")));
        let rejected = json!({"result": {"kind": "task", "id": "t-2", "status": {"state": "rejected"}}});
        assert_eq!(interpret(&rejected), Err(DeliveryError::permanent("task t-2 rejected")));

        let invalid = json!({"jsonrpc": "2.0", "id": "1", "error": {"code": -32602, "message": "Invalid parameters", "data": "message.parts is empty"}});
        assert_eq!(
            interpret(&invalid),
            Err(DeliveryError::permanent(
                "JSON-RPC error -32602 (invalid params): Invalid parameters (data: message.parts is empty)"
            ))
        );
        let not_found = json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32001, "message": "Task not found"}});
        assert!(matches!(interpret(&not_found), Err(DeliveryError::Permanent { .. })));
        let internal = json!({"jsonrpc": "2.0", "id": "1", "error": {"code": -32603, "message": "boom"}});
        assert_eq!(interpret(&internal), Err(DeliveryError::transient("JSON-RPC error -32603 (internal error): boom")));

        for nonsense in [json!([1]), json!({"jsonrpc": "2.0"}), json!({"result": {"foo": 1}})] {
            assert!(matches!(interpret(&nonsense), Err(DeliveryError::Permanent { .. })), "{nonsense}");
        }
    }
}
