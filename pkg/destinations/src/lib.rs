//! ktrigger destinations: where the events a trigger keeps are delivered.
//!
//! Each destination type is a [`DestinationFactory`](ktrigger_core::DestinationFactory)
//! added to the engine's registry by [`register`]. HTTP destinations share [`http`]: one client on
//! rustls with the ring provider, and one mapping of HTTP outcomes to delivery outcomes.

use std::sync::Arc;

use ktrigger_core::{EgressPolicy, Registry};

pub mod dingtalk;
pub mod email;
pub mod http;
pub mod kagent;
pub mod khook;
pub mod lark;
pub mod log;
pub mod message;
pub mod slack;
pub mod teams;
pub mod webhook;

/// Adds every destination type of this crate to `registry`: `log`, `webhook`, `kagent`, `email`,
/// `slack`, `teams`, `dingtalk` and `lark`. Network destinations connect where
/// [`EgressPolicy::local`] allows. (The destinations that act on Kubernetes are in `ktrigger-kube`.)
pub fn register(registry: &mut Registry) {
    registry.add_destination_type(log::LogFactory::stdout());
    registry.add_destination_type(webhook::WebhookFactory::new());
    registry.add_destination_type(kagent::KagentFactory::new());
    registry.add_destination_type(email::EmailFactory::new());
    registry.add_destination_type(slack::SlackFactory::new());
    registry.add_destination_type(teams::TeamsFactory::new());
    registry.add_destination_type(dingtalk::DingTalkFactory::new());
    registry.add_destination_type(lark::LarkFactory::new());
}

/// Replaces the network destinations (`webhook`, `kagent`, `slack`, `teams`, `dingtalk`, `lark`
/// and `email`) by ones that connect only where `egress` allows, the HTTP ones through one client.
pub fn register_with_egress(registry: &mut Registry, egress: Arc<EgressPolicy>) -> Result<(), String> {
    let client = http::http_client(None, egress.clone())?;
    registry.add_destination_type(webhook::WebhookFactory::with_client(client.clone()));
    registry.add_destination_type(kagent::KagentFactory::with_client(client.clone()));
    registry.add_destination_type(slack::SlackFactory::with_client(client.clone()));
    registry.add_destination_type(teams::TeamsFactory::with_client(client.clone()));
    registry.add_destination_type(dingtalk::DingTalkFactory::with_client(client.clone()));
    registry.add_destination_type(lark::LarkFactory::with_client(client));
    registry.add_destination_type(email::EmailFactory::with_egress(egress));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_every_destination_type() {
        let mut registry = Registry::default();
        register(&mut registry);
        let names = registry.destination_names();
        assert_eq!(names, ["dingtalk", "email", "kagent", "lark", "log", "slack", "teams", "webhook"]);
    }
}
