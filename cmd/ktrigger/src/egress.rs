//! The egress options shared by `run` and `controller`: where sources and destinations may connect.

use std::net::IpAddr;
use std::sync::Arc;

use clap::Args;
use ipnet::IpNet;
use ktrigger_core::{EgressPolicy, parse_cidr};

/// The operator's allow and deny lists.
#[derive(Debug, Args)]
pub struct EgressArgs {
    /// Let sources and destinations connect to this CIDR (or address), even where it is refused
    /// by default (link-local; in controller mode also loopback and the API server); repeatable.
    #[arg(long = "egress-allow", value_name = "CIDR", value_parser = parse_cidr)]
    allow: Vec<IpNet>,
    /// Refuse connections to this CIDR (or address); repeatable; wins over --egress-allow.
    #[arg(long = "egress-deny", value_name = "CIDR", value_parser = parse_cidr)]
    deny: Vec<IpNet>,
}

impl EgressArgs {
    /// The policy of `run`: link-local refused, loopback allowed, then the operator's lists.
    pub fn local(&self) -> Arc<EgressPolicy> {
        Arc::new(EgressPolicy::local().with_rules(self.allow.clone(), self.deny.clone()))
    }

    /// The policy of `controller`: link-local, loopback and the addresses of `cluster`'s API server
    /// refused, then the operator's lists.
    pub async fn shared(&self, cluster: &ktrigger_kube::Cluster) -> Arc<EgressPolicy> {
        let api_server = api_server_addresses(cluster).await;
        Arc::new(EgressPolicy::shared(&api_server).with_rules(self.allow.clone(), self.deny.clone()))
    }
}

/// The addresses the API server is reached at: its URL's host resolved now, and the in-cluster
/// Service address (`KUBERNETES_SERVICE_HOST`).
async fn api_server_addresses(cluster: &ktrigger_kube::Cluster) -> Vec<IpAddr> {
    let mut addresses = Vec::new();
    if let Some((host, port)) = cluster.api_server() {
        match tokio::net::lookup_host((host, port)).await {
            Ok(found) => addresses.extend(found.map(|address| address.ip())),
            Err(e) => tracing::warn!("cannot resolve the API server {host} for the egress policy: {e}"),
        }
    }
    if let Some(address) = std::env::var("KUBERNETES_SERVICE_HOST").ok().and_then(|host| host.parse().ok()) {
        addresses.push(address);
    }
    addresses
}
