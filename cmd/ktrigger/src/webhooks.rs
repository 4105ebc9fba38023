//! The limits of the shared webhook listener, as flags of `run` and `controller`.

use std::time::Duration;

use clap::Args;
use ktrigger_sources::listener::{
    DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_BUFFERED_BYTES, ListenerOptions, MAX_TIMEOUT, PathScope,
};
use ktrigger_sources::server::ServerLimits;

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
