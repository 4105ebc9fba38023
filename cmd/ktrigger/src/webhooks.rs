//! The limits of the shared webhook listener, as flags of `run` and `controller`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use ktrigger_sources::WebhookListener;
use ktrigger_sources::listener::{
    DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_BUFFERED_BYTES, ListenerOptions, MAX_TIMEOUT, PathScope,
};
use ktrigger_sources::server::ServerLimits;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Bounds of the webhook listener that no client can outlast.
#[derive(Debug, Args)]
pub struct WebhookLimits {
    /// Webhook connections served at once; further ones wait in the socket backlog.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    webhook_max_connections: u32,
    /// Time for a request's headers to arrive, counted from the connection opening or the
    /// previous answer; slower connections are closed.
    #[arg(long, default_value = "10s", value_parser = parse_timeout)]
    webhook_header_timeout: Duration,
    /// Time to receive a whole request body; slower requests get 408 and are closed.
    #[arg(long, default_value = "10s", value_parser = parse_timeout)]
    webhook_body_timeout: Duration,
    /// A kept-alive webhook connection with no new request this long after an answer is closed.
    #[arg(long, default_value = "5s", value_parser = parse_timeout)]
    webhook_idle_timeout: Duration,
    /// Largest webhook request body in bytes; larger ones get 413.
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES)]
    webhook_max_body_bytes: usize,
    /// Request body bytes held in memory at once over all webhook connections; beyond it
    /// requests get 503. At least --webhook-max-body-bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_BUFFERED_BYTES)]
    webhook_max_buffered_bytes: usize,
}

impl WebhookLimits {
    /// The listener's options: paths placed as `scope` says, open connections closed when
    /// `shutdown_grace` ends after a stop.
    pub fn options(&self, scope: PathScope, shutdown_grace: Duration) -> ListenerOptions {
        ListenerOptions {
            scope,
            max_body_bytes: self.webhook_max_body_bytes,
            max_buffered_bytes: self.webhook_max_buffered_bytes,
            body_timeout: self.webhook_body_timeout,
            server: ServerLimits {
                max_connections: self.webhook_max_connections as usize,
                header_timeout: self.webhook_header_timeout,
                idle_timeout: self.webhook_idle_timeout,
                shutdown_grace,
            },
        }
    }
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let duration = ktrigger_api::parse_duration(text)?;
    if duration > MAX_TIMEOUT {
        return Err(format!("{text:?} is longer than {}s", MAX_TIMEOUT.as_secs()));
    }
    Ok(duration)
}

/// `/metrics` families of the webhook listener, read from it at scrape time.
#[derive(Debug)]
pub struct WebhookCollector(pub Arc<WebhookListener>);

impl Collector for WebhookCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let stats = self.0.stats();
        let open = ConstGauge::new(i64::try_from(stats.open_connections).unwrap_or(i64::MAX));
        open.encode(encoder.encode_descriptor(
            "ktrigger_webhook_connections",
            "Webhook connections being served now",
            None,
            open.metric_type(),
        )?)?;
        let rejected = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "ktrigger_webhook_rejected",
            "Webhook connections cut and requests answered without firing, by reason",
            None,
            rejected.metric_type(),
        )?;
        let reasons = [
            ("header_timeout", stats.header_timeouts),
            ("body_timeout", stats.body_timeouts),
            ("body_too_large", stats.too_large),
            ("body_memory", stats.over_budget),
            ("unauthorized", stats.unauthorized),
            ("duplicate", stats.duplicates),
        ];
        for (reason, value) in reasons {
            ConstCounter::new(value).encode(family.encode_family(&[("reason", reason)])?)?;
        }
        Ok(())
    }
}
