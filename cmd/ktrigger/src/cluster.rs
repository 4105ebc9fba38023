//! The command-line options that say how to reach a Kubernetes cluster, shared by `run` and
//! `controller`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::durations::{parse_duration, parse_duration_or_zero};

/// How to reach the cluster and tune its watches.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Kubeconfig; default KUBECONFIG, then ~/.kube/config, then the in-cluster service account.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use instead of the current one.
    #[arg(long)]
    context: Option<String>,
    /// YAML file of custom k8s-events presets: `mappings: [{name, condition}]` (CEL over the Event).
    #[arg(long)]
    event_mappings: Option<PathBuf>,
    /// How long a Kubernetes watch may keep failing before its triggers report it unhealthy.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    watch_unhealthy_after: Duration,
    /// How long a SubjectAccessReview letting a ServiceAccount share a watch opened as another
    /// identity is trusted before it is asked again; 0s: no sharing across identities.
    #[arg(long, default_value = "1m", value_parser = parse_duration_or_zero)]
    access_review_ttl: Duration,
}

impl ClusterArgs {
    /// Connects as the options say, giving TriggerServices identities by `identities`; a
    /// missing cluster is reported by the triggers that need one.
    pub async fn connect(&self, identities: ktrigger_kube::IdentityPolicy) -> anyhow::Result<ktrigger_kube::Cluster> {
        let options = ktrigger_kube::ClusterOptions {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
            event_mappings: self.event_mappings.clone(),
            hub: ktrigger_kube::HubOptions {
                unhealthy_after: self.watch_unhealthy_after,
                access_review_ttl: self.access_review_ttl,
            },
            identities,
        };
        Ok(ktrigger_kube::Cluster::connect(&options).await?)
    }
}
