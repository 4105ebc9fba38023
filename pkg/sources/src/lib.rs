//! ktrigger sources that need no Kubernetes API: `cron`, `http-poller` and the inbound `webhook`.
//!
//! Every source type is a [`SourceType`](ktrigger_core::SourceType) (one properties struct)
//! added to the engine's [`Registry`] by [`register`].
//! Webhook sources share one HTTP server, the [`WebhookListener`], which the binary binds and serves.

use std::sync::Arc;

use ktrigger_core::{EgressPolicy, Registry};

mod auth;
pub mod cron;
pub mod http_poller;
mod json_budget;
pub mod listener;
mod replay;
pub mod server;
#[cfg(test)]
mod test_store;
pub mod webhook;

pub use listener::{ListenerOptions, ListenerStats, PathScope, WebhookListener};
pub use server::{ServerCounters, ServerLimits};

/// Errors of this crate outside of loading properties (those are
/// [`PropertyError`](ktrigger_core::PropertyError)s naming the property).
#[derive(Debug, thiserror::Error)]
pub enum SourcesError {
    /// The webhook listener could not bind its address.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// The webhook listener is already being served.
    #[error("the webhook listener is already being served")]
    AlreadyServing,
    /// The webhook listener was made with [`WebhookListener::detached`] and has no socket.
    #[error("the webhook listener is not bound to an address")]
    NotBound,
    /// The webhook listener's limits contradict each other.
    #[error("webhook listener limits: {0}")]
    Limits(String),
}

/// Adds the `cron` (alias `cronjob`), `http-poller` and `webhook` source types to `registry`.
/// Webhook sources register their paths on `webhooks` while they run.
pub fn register(registry: &mut Registry, webhooks: Arc<WebhookListener>) {
    registry.add_source_type(cron::CronFactory);
    registry.add_source_type(http_poller::HttpPollerFactory::default());
    registry.add_source_type(webhook::WebhookFactory::new(webhooks));
}

/// Replaces the `http-poller` source type by one whose pollers connect only where `egress` allows
/// ([`register`] uses [`EgressPolicy::local`]).
pub fn register_http_poller(registry: &mut Registry, egress: Arc<EgressPolicy>) {
    registry.add_source_type(http_poller::HttpPollerFactory::with_egress(egress));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn register_adds_every_type_and_alias() {
        let listener = WebhookListener::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let mut registry = Registry::default();
        register(&mut registry, listener);
        assert_eq!(registry.source_names(), ["cron", "http-poller", "webhook"]);
        assert_eq!(registry.source("cronjob").unwrap().doc().name, "cron");
        for doc in registry.source_docs() {
            assert!(!doc.summary.is_empty() && !doc.properties.is_empty(), "{}", doc.name);
            assert!(doc.example.contains(&format!("type: {}", doc.name)), "{}", doc.name);
        }
    }

    #[tokio::test]
    async fn examples_in_docs_load() {
        let listener = WebhookListener::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let mut registry = Registry::default();
        register(&mut registry, listener);
        let context = ktrigger_core::BuildContext::new(ktrigger_core::TriggerId {
            namespace: "apps".into(),
            service: "svc".into(),
            trigger: "t".into(),
        });
        for doc in registry.source_docs() {
            let value: serde_json::Value = serde_yaml::from_str(&doc.example).unwrap();
            let source = &value["source"];
            assert_eq!(source["type"], doc.name);
            let factory = registry.source(&doc.name).unwrap();
            // Secrets are resolved last, so an unset variable means everything else loaded.
            if let Err(e) = factory.build(&source["properties"], &context).map_err(|e| e.to_string()) {
                assert!(e.contains("environment variable") && e.contains("is not set"), "{}: {e}", doc.name);
            }
        }
    }
}
