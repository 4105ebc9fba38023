//! The HTTP client of every HTTP destination, and how HTTP outcomes map to delivery outcomes.
//!
//! Responses: 2xx is a success; 408, 429 and 5xx are transient (with `Retry-After` honoured);
//! any other status is permanent. Connection errors and timeouts are transient, except a
//! connection the egress policy refuses, which is permanent. Reasons carry the status and a short
//! snippet of the response body, never request headers, URLs or credentials.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use ktrigger_core::{DeliveryError, EgressLayer, EgressPolicy, EgressResolver, PropertyError, Receipt, find_refusal};
use reqwest::header::RETRY_AFTER;
use reqwest::{RequestBuilder, Response, StatusCode};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// How long establishing a connection (TCP and TLS) may take before the attempt is transient.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How many characters of a response body a failure reason quotes at most.
pub const SNIPPET_CHARS: usize = 200;

/// How many bytes of an error response body are read to make the snippet.
const BODY_READ_LIMIT: usize = 4096;

/// How long reading the body of an error response may take before it is given up.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// A new HTTP client: rustls over ring, connect timeout [`CONNECT_TIMEOUT`], redirects not
/// followed (they could carry secret headers elsewhere), connections only where `egress` allows
/// (names resolved through it, and the peer of every connection checked), and an overall
/// `timeout` when given. Delivery timeouts are normally enforced by the engine, so destinations
/// pass `None`.
pub fn http_client(timeout: Option<Duration>, egress: Arc<EgressPolicy>) -> Result<reqwest::Client, String> {
    ktrigger_core::tls::ensure_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(EgressResolver(egress.clone()))
        .connector_layer(EgressLayer(egress))
        .user_agent(concat!("ktrigger/", env!("CARGO_PKG_VERSION")));
    if let Some(timeout) = timeout {
        builder = builder.timeout(timeout);
    }
    builder.build().map_err(|e| format!("cannot create the HTTP client: {}", error_chain(&e)))
}

/// The client a factory was given, else the process-wide [`shared_client`].
pub fn client_or_shared(client: Option<&reqwest::Client>) -> Result<reqwest::Client, PropertyError> {
    match client {
        Some(client) => Ok(client.clone()),
        None => shared_client().map_err(PropertyError::whole),
    }
}

/// The client shared by destinations registered without an egress policy of their own: one
/// connection pool, one TLS setup, the [`EgressPolicy::local`] policy of `ktrigger run`.
pub fn shared_client() -> Result<reqwest::Client, String> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT.get_or_init(|| http_client(None, Arc::new(EgressPolicy::local()))).clone()
}

/// Adds the W3C `traceparent` (and `tracestate`) of the current delivery attempt's span when
/// tracing is on; without it the span is disabled and the request is left as it is.
pub fn traced(request: RequestBuilder) -> RequestBuilder {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return request;
    }
    let context = span.context();
    let mut headers = TraceHeaders(Vec::new());
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.inject_context(&context, &mut headers));
    headers.0.into_iter().fold(request, |request, (name, value)| request.header(name, value))
}

/// The headers a propagator writes.
struct TraceHeaders(Vec<(&'static str, String)>);

impl opentelemetry::propagation::Injector for TraceHeaders {
    fn set(&mut self, key: &str, value: String) {
        // Only the trace-context names are taken: a header name must outlive the request builder.
        let name = match key {
            "traceparent" => "traceparent",
            "tracestate" => "tracestate",
            _ => return,
        };
        self.0.push((name, value));
    }
}

/// Sends `request` (with the trace context, see [`traced`]) and classifies the outcome; the
/// receipt says `HTTP <status>`.
pub async fn send(request: RequestBuilder) -> Result<Receipt, DeliveryError> {
    match traced(request).send().await {
        Ok(response) => classify(response).await,
        Err(error) => Err(classify_error(&error)),
    }
}

/// Classifies a response: a receipt `HTTP <status>` for 2xx, the delivery error otherwise.
pub async fn classify(response: Response) -> Result<Receipt, DeliveryError> {
    let response = check(response).await?;
    Ok(Receipt { detail: Some(format!("HTTP {}", response.status().as_u16())) })
}

/// Passes a 2xx response through (for callers that read its body) and turns any other into the
/// delivery error it stands for, reading a little of its body for the reason.
pub async fn check(response: Response) -> Result<Response, DeliveryError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| parse_retry_after(value, SystemTime::now()));
    let body = read_body_prefix(response).await;
    Err(status_error(status, &body, retry_after))
}

/// The delivery error for a non-2xx `status` whose body starts with `body`.
pub fn status_error(status: StatusCode, body: &[u8], retry_after: Option<Duration>) -> DeliveryError {
    let mut reason = format!("HTTP {status}");
    if status.is_redirection() {
        reason.push_str(" (redirects are not followed)");
    }
    let quoted = snippet(&String::from_utf8_lossy(body));
    if !quoted.is_empty() {
        reason.push_str(": ");
        reason.push_str(&quoted);
    }
    if is_transient_status(status) {
        DeliveryError::Transient { reason, retry_after }
    } else {
        DeliveryError::Permanent { reason }
    }
}

/// Whether retrying a request answered with `status` may succeed: 408, 429 and 5xx.
pub fn is_transient_status(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// Classifies a failure to get a response: timeouts and connection errors are transient, a
/// request that cannot be built or a connection the egress policy refuses is permanent. The
/// reason never contains the URL.
pub fn classify_error(error: &reqwest::Error) -> DeliveryError {
    if let Some(refused) = find_refusal(error) {
        return DeliveryError::permanent(format!("connection refused: {refused}"));
    }
    let what = if error.is_timeout() {
        "request timed out"
    } else if error.is_connect() {
        "connection failed"
    } else if error.is_builder() {
        "invalid request"
    } else if error.is_body() || error.is_decode() {
        "reading the response failed"
    } else {
        "request failed"
    };
    let detail = error_chain(error);
    let reason = if detail.is_empty() { what.to_string() } else { format!("{what}: {detail}") };
    if error.is_builder() { DeliveryError::permanent(reason) } else { DeliveryError::transient(reason) }
}

/// Parses a `Retry-After` value, delta-seconds or HTTP-date (a date in the past means now).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `text` on one line, whitespace collapsed, cut to [`SNIPPET_CHARS`] characters with `…`.
pub fn snippet(text: &str) -> String {
    let mut out = String::new();
    let mut chars = 0;
    for word in text.split_whitespace() {
        if chars > 0 {
            out.push(' ');
            chars += 1;
        }
        for c in word.chars() {
            if chars >= SNIPPET_CHARS {
                out.push('…');
                return out;
            }
            out.push(c);
            chars += 1;
        }
    }
    out
}

/// Replaces every occurrence of each non-empty secret in the reason of `error` by `<redacted>`,
/// for receivers that echo what they were sent.
pub fn redact(error: DeliveryError, secrets: &[&str]) -> DeliveryError {
    let scrub = |mut reason: String| {
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            if reason.contains(secret) {
                reason = reason.replace(secret, "<redacted>");
            }
        }
        reason
    };
    match error {
        DeliveryError::Transient { reason, retry_after } => {
            DeliveryError::Transient { reason: scrub(reason), retry_after }
        }
        DeliveryError::Permanent { reason } => DeliveryError::Permanent { reason: scrub(reason) },
    }
}

/// The messages of the causes of `error`, outermost first, without its own message (which names
/// the URL) and without repeats.
fn error_chain(error: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let message = cause.to_string();
        if !message.is_empty() && !parts.iter().any(|p| p.contains(&message)) {
            parts.push(message);
        }
        source = cause.source();
    }
    parts.join(": ")
}

/// Up to [`BODY_READ_LIMIT`] bytes of the body, or what arrived within [`BODY_READ_TIMEOUT`].
async fn read_body_prefix(mut response: Response) -> Vec<u8> {
    let mut body = Vec::new();
    let read = async {
        while body.len() < BODY_READ_LIMIT {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(BODY_READ_TIMEOUT, read).await;
    body.truncate(BODY_READ_LIMIT);
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2026 07:28:00 GMT").unwrap();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2026 07:28:30 GMT", now), Some(Duration::from_secs(30)));
        // The obsolete RFC 850 and asctime forms are HTTP-dates too.
        assert_eq!(parse_retry_after("Wednesday, 21-Oct-26 07:29:00 GMT", now), Some(Duration::from_secs(60)));
        assert_eq!(parse_retry_after("Wed Oct 21 07:28:05 2026", now), Some(Duration::from_secs(5)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2026 07:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn statuses_map_to_outcomes() {
        for code in [408, 429, 500, 502, 503, 504] {
            let error = status_error(StatusCode::from_u16(code).unwrap(), b"", None);
            assert!(matches!(error, DeliveryError::Transient { .. }), "{code}: {error:?}");
        }
        for code in [301, 400, 401, 403, 404, 409, 422] {
            let error = status_error(StatusCode::from_u16(code).unwrap(), b"", None);
            assert!(matches!(error, DeliveryError::Permanent { .. }), "{code}: {error:?}");
        }
        let error = status_error(StatusCode::BAD_REQUEST, b"{\"error\":\n  \"bad field\"}", None);
        assert_eq!(error.to_string(), "HTTP 400 Bad Request: {\"error\": \"bad field\"}");
        let error = status_error(StatusCode::FOUND, b"", None);
        assert_eq!(error.to_string(), "HTTP 302 Found (redirects are not followed)");
    }

    #[test]
    fn snippets_are_short_single_lines() {
        assert_eq!(snippet("  a\n\tb  "), "a b");
        let long = "é".repeat(500);
        let cut = snippet(&long);
        assert_eq!(cut.chars().count(), SNIPPET_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(snippet(&"x".repeat(SNIPPET_CHARS)), "x".repeat(SNIPPET_CHARS));
    }

    #[test]
    fn redaction_hides_secrets_in_reasons() {
        let error = DeliveryError::Transient { reason: "echo: token=abc123".into(), retry_after: None };
        let error = redact(error, &["abc123", ""]);
        assert_eq!(error.to_string(), "echo: token=<redacted>");
    }

    #[tokio::test]
    async fn refused_addresses_fail_permanently_whether_named_or_literal() {
        let app = axum::Router::new().fallback(|| async { "ok" });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let shared = EgressPolicy::shared(&[]);
        let refusing = http_client(None, Arc::new(shared.clone())).unwrap();
        for url in [format!("http://127.0.0.1:{port}/"), format!("http://localhost:{port}/")] {
            let error = send(refusing.get(&url)).await.unwrap_err();
            assert!(matches!(error, DeliveryError::Permanent { .. }), "{url}: {error:?}");
            assert!(error.to_string().contains("is refused by the egress policy (loopback)"), "{url}: {error}");
            assert!(!error.to_string().contains(&port.to_string()), "no URL in the reason: {error}");
        }

        let allow = vec![ktrigger_core::parse_cidr("127.0.0.1").unwrap()];
        let allowing = http_client(None, Arc::new(shared.with_rules(allow, vec![]))).unwrap();
        let receipt = send(allowing.get(format!("http://127.0.0.1:{port}/"))).await.unwrap();
        assert_eq!(receipt.detail.as_deref(), Some("HTTP 200"));
    }

    #[test]
    fn clients_build_with_ring_only() {
        http_client(Some(Duration::from_secs(1)), Arc::default()).unwrap();
        shared_client().unwrap();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
