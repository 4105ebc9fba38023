//! ktrigger destinations: where the events a trigger keeps are delivered.
//!
//! Each destination type is a [`DestinationFactory`](ktrigger_core::registry::DestinationFactory)
//! added to the engine's registry by [`register`]. HTTP destinations share [`http`]: one client on
//! rustls with the ring provider, and one mapping of HTTP outcomes to delivery outcomes.

#![warn(missing_docs)]

use std::sync::Arc;

use ktrigger_core::registry::Registry;

pub mod http;
pub mod log;
pub mod webhook;

/// Adds every destination type of this crate to `registry`: `log` and `webhook`.
pub fn register(registry: &mut Registry) {
    registry.add_destination(Arc::new(log::LogFactory::stdout()));
    registry.add_destination(Arc::new(webhook::WebhookFactory::new()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_log_and_webhook() {
        let mut registry = Registry::default();
        register(&mut registry);
        assert_eq!(registry.destination_names(), ["log", "webhook"]);
    }
}
