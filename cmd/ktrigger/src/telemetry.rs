//! The one tracing subscriber: log lines on stderr and, with `--otlp-endpoint`, the spans of
//! `ktrigger::trace` exported over OTLP/HTTP (protobuf) to a collector.

use bytes::Bytes;
use clap::Args;
use ktrigger_core::TRACE_TARGET;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

use crate::LogFormat;

/// How long one export to the collector may take.
const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Options of OpenTelemetry tracing.
#[derive(Debug, Clone, Default, Args)]
pub struct TracingArgs {
    /// Export a trace of every event (filter, router, each delivery attempt) over OTLP/HTTP to
    /// this collector URL (`/v1/traces` is appended), and send W3C `traceparent` headers on
    /// HTTP deliveries. Off when not set.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// The exporter of spans, when tracing is on: flushed by [`Tracing::shutdown`].
pub struct Tracing(Option<SdkTracerProvider>);

impl Tracing {
    /// Exports the spans still buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.0
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!("traces not all exported at shutdown: {e}");
        }
    }
}

/// Installs the subscriber: log lines of `level` in `format` on stderr, and when `otlp` is
/// given, the spans exported to it. Exports run on `runtime`.
pub fn init(
    format: LogFormat,
    level: &str,
    otlp: Option<&str>,
    runtime: &tokio::runtime::Handle,
) -> Result<Tracing, String> {
    // The spans are for the exporter: logs stay as they were, whatever the level.
    let filter = EnvFilter::builder()
        .parse(format!("{level},{TRACE_TARGET}=off"))
        .map_err(|e| format!("--log-level {level:?}: {e}"))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().boxed(),
    };
    let Some(endpoint) = otlp else {
        tracing_subscriber::registry().with(logs.with_filter(filter)).init();
        return Ok(Tracing(None));
    };
    let provider = provider(endpoint, runtime).map_err(|e| format!("--otlp-endpoint {endpoint:?}: {e}"))?;
    // Where a span was opened is always `trace.rs`, and thread and busy times say little.
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("ktrigger"))
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(Targets::new().with_target(TRACE_TARGET, LevelFilter::DEBUG));
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    tracing_subscriber::registry().with(logs.with_filter(filter)).with(spans).init();
    Ok(Tracing(Some(provider)))
}

/// A batching tracer provider for service `ktrigger` exporting to `endpoint`.
fn provider(endpoint: &str, runtime: &tokio::runtime::Handle) -> Result<SdkTracerProvider, String> {
    let url = reqwest::Url::parse(endpoint).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("the URL must be http or https".into());
    }
    let traces = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| format!("cannot create the HTTP client: {e}"))?;
    let exporter = SpanExporter::builder()
        .with_http()
        .with_http_client(Exporter { client, runtime: runtime.clone() })
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(traces)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let resource = Resource::builder().with_service_name("ktrigger").build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}

/// Sends export requests with the process's reqwest on its async runtime: the batch exporter
/// runs them from a thread of its own.
#[derive(Debug)]
struct Exporter {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for Exporter {
    async fn send_bytes(&self, request: http::Request<Bytes>) -> Result<http::Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let sent = self.runtime.spawn(async move {
            let response = client.execute(reqwest::Request::try_from(request)?).await?;
            let mut answer = http::Response::builder().status(response.status());
            if let Some(headers) = answer.headers_mut() {
                *headers = response.headers().clone();
            }
            let body = response.bytes().await?;
            Ok::<_, HttpError>(answer.body(body)?)
        });
        sent.await?
    }
}
