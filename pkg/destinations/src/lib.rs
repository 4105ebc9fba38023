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
pub mod kube;
pub mod lark;
pub mod log;
pub mod message;
pub mod slack;
pub mod teams;
pub mod webhook;

/// Adds every destination type of this crate to `registry`: `log`, `webhook`, `kagent`, `email`,
/// `slack`, `teams`, `dingtalk` and `lark`, and the Kubernetes ones without a cluster (see
/// [`register_kube`]). Network destinations connect where [`EgressPolicy::local`] allows.
pub fn register(registry: &mut Registry) {
    registry.add_destination_type(log::LogFactory::stdout());
    registry.add_destination_type(webhook::WebhookFactory::new());
    registry.add_destination_type(kagent::KagentFactory::new());
    registry.add_destination_type(email::EmailFactory::new());
    registry.add_destination_type(slack::SlackFactory::new());
    registry.add_destination_type(teams::TeamsFactory::new());
    registry.add_destination_type(dingtalk::DingTalkFactory::new());
    registry.add_destination_type(lark::LarkFactory::new());
    kube::register(registry, kube::KubeTarget::new(None));
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

/// Adds (or replaces) `patch-resource`, `bump-application-revision`, `create-event`, `job`
/// (alias `task`), `create-event-listener` and `record-event`, acting on `target`; without a
/// client every delivery of theirs fails permanently.
pub fn register_kube(registry: &mut Registry, target: kube::KubeTarget) {
    kube::register(registry, target);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_every_destination_type() {
        let mut registry = Registry::default();
        register(&mut registry);
        let names = registry.destination_names();
        assert_eq!(
            names,
            [
                "bump-application-revision",
                "create-event",
                "create-event-listener",
                "dingtalk",
                "email",
                "job",
                "kagent",
                "lark",
                "log",
                "patch-resource",
                "record-event",
                "slack",
                "teams",
                "webhook"
            ]
        );
    }
}
