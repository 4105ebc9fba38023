//! `ktrigger status` (also `kubectl ktrigger status`): a table of TriggerServices and their
//! triggers, read from the cluster, or from the admin endpoint of a `ktrigger run`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use ktrigger_api::{TriggerService, trigger_names};
use ktrigger_core::{EngineObserver, TriggerId, rfc3339};
use kube::api::{Api, ListParams};
use serde::{Deserialize, Serialize};

use crate::{Output, write_stdout};

/// Options of `ktrigger status`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    ktrigger status                      # the current namespace of the kubeconfig\n  \
    ktrigger status -A                   # every namespace\n  \
    kubectl ktrigger status -n apps pod-doctor\n  \
    ktrigger status --endpoint http://127.0.0.1:8091   # a `ktrigger run --admin-addr 127.0.0.1:8091`")]
pub struct StatusArgs {
    /// Only this TriggerService.
    name: Option<String>,
    /// Namespace; default: the kubeconfig context's.
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    all_namespaces: bool,
    /// Kubeconfig; default KUBECONFIG, then ~/.kube/config, then the in-cluster service account.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use instead of the current one.
    #[arg(long)]
    context: Option<String>,
    /// Read the triggers of a `ktrigger run` from its admin endpoint instead of a cluster.
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// One trigger as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerRow {
    /// Namespace of the TriggerService (empty for local files without one).
    pub namespace: String,
    /// The TriggerService.
    pub service: String,
    /// The TriggerService's `Ready` condition: True, False or Unknown.
    pub ready: String,
    /// The trigger.
    pub trigger: String,
    /// Source → filter → destinations.
    pub pipeline: String,
    /// Whether the trigger runs.
    pub running: bool,
    /// Events its source produced.
    pub received: u64,
    /// Events dropped by filter, dedup, rate limit or debounce.
    pub filtered: u64,
    /// Events passed on to the destinations.
    pub fired: u64,
    /// Failed delivery attempts.
    pub failed: u64,
    /// When it last fired (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fired: Option<String>,
    /// Dedup keys now held (from a cluster: those firing).
    pub active_events: usize,
    /// The last error it met.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// `ktrigger status`.
pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let rows = match &args.endpoint {
        Some(endpoint) => from_endpoint(endpoint, args.name.as_deref()).await?,
        None => from_cluster(&args).await?,
    };
    let text = match args.output {
        Output::Json => serde_json::to_string_pretty(&rows)? + "\n",
        Output::Yaml => serde_yaml::to_string(&rows)?,
        Output::Text if rows.is_empty() => "no TriggerService found\n".to_string(),
        Output::Text => table(&rows, Utc::now()),
    };
    write_stdout(text.as_bytes())
}

async fn from_cluster(args: &StatusArgs) -> anyhow::Result<Vec<TriggerRow>> {
    let options = ktrigger_kube::ClusterOptions {
        kubeconfig: args.kubeconfig.clone(),
        context: args.context.clone(),
        ..Default::default()
    };
    let cluster = ktrigger_kube::Cluster::connect(&options).await?;
    let Some(client) = cluster.kube_client() else {
        anyhow::bail!("no cluster: {}", cluster.unavailable_reason().unwrap_or("use --kubeconfig or KUBECONFIG"));
    };
    let api: Api<TriggerService> = if args.all_namespaces {
        Api::all(client)
    } else {
        let namespace = args.namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
        Api::namespaced(client, &namespace)
    };
    let mut services = match &args.name {
        Some(name) => vec![api.get(name).await.with_context(|| format!("TriggerService {name:?}"))?],
        None => api.list(&ListParams::default()).await.context("listing TriggerServices")?.items,
    };
    services.sort_by(|a, b| (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name)));
    Ok(services.iter().flat_map(rows_of).collect())
}

/// The rows of one TriggerService object: its spec says the pipeline, its status the counters.
fn rows_of(service: &TriggerService) -> Vec<TriggerRow> {
    let status = service.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map_or_else(|| "Unknown".to_string(), |c| c.status.clone());
    let by_name: BTreeMap<&str, &ktrigger_api::TriggerStatus> =
        status.triggers.iter().map(|t| (t.name.as_str(), t)).collect();
    let names = trigger_names(&service.spec);
    service
        .spec
        .triggers
        .iter()
        .zip(names)
        .map(|(trigger, name)| {
            let counters = by_name.get(name.as_str()).copied().cloned().unwrap_or_default();
            TriggerRow {
                namespace: service.metadata.namespace.clone().unwrap_or_default(),
                service: service.metadata.name.clone().unwrap_or_default(),
                ready: ready.clone(),
                pipeline: pipeline(trigger),
                trigger: name,
                running: counters.ready,
                received: counters.received,
                filtered: counters.filtered,
                fired: counters.fired,
                failed: counters.failed,
                last_fired: counters.last_fired.clone(),
                active_events: counters.active_events.iter().filter(|e| e.state == "firing").count(),
                last_error: counters.last_error.clone(),
            }
        })
        .collect()
}

/// `k8s-events → filter → kagent, slack`.
fn pipeline(trigger: &ktrigger_api::Trigger) -> String {
    let destinations: Vec<&str> = trigger.all_destinations().map(|d| d.type_name.as_str()).collect();
    let filter = if trigger.filter.as_deref().is_some_and(|f| !f.trim().is_empty()) { " → filter" } else { "" };
    format!("{}{filter} → {}", trigger.source.type_name, destinations.join(", "))
}

async fn from_endpoint(endpoint: &str, name: Option<&str>) -> anyhow::Result<Vec<TriggerRow>> {
    let url = format!("{}/status", endpoint.trim_end_matches('/'));
    let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(10)).build()?;
    let response = client.get(&url).send().await.with_context(|| format!("cannot reach {url}"))?;
    anyhow::ensure!(response.status().is_success(), "{url} answered {}", response.status());
    let rows: Vec<TriggerRow> = response.json().await.with_context(|| format!("{url} did not answer status rows"))?;
    Ok(rows.into_iter().filter(|row| name.is_none_or(|name| row.service == name)).collect())
}

/// The rows of the triggers an engine runs, for the admin endpoint of `ktrigger run`.
/// `pipelines` holds each loaded trigger's load-line summary.
pub fn engine_rows(observer: &EngineObserver, pipelines: &BTreeMap<TriggerId, String>) -> Vec<TriggerRow> {
    let running: BTreeMap<TriggerId, _> = observer.snapshot().into_iter().map(|m| (m.id.clone(), m)).collect();
    pipelines
        .iter()
        .map(|(id, pipeline)| {
            let metrics = running.get(id);
            let stats = metrics.map(|m| m.stats.clone()).unwrap_or_default();
            TriggerRow {
                namespace: id.namespace.clone(),
                service: id.service.clone(),
                ready: if stats.ready { "True" } else { "False" }.to_string(),
                trigger: id.trigger.clone(),
                pipeline: pipeline.clone(),
                running: stats.ready,
                received: stats.received,
                filtered: stats.filtered,
                fired: stats.fired,
                failed: stats.failed,
                last_fired: stats.last_fired.map(rfc3339),
                active_events: metrics.map_or(0, |m| m.dedup.keys),
                last_error: stats.last_error,
            }
        })
        .collect()
}

/// Serves `GET /status` with [`engine_rows`] on `listener` until `stop`.
pub async fn serve_admin(
    listener: tokio::net::TcpListener,
    observer: EngineObserver,
    pipelines: Arc<BTreeMap<TriggerId, String>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let app = axum::Router::new().route(
        "/status",
        axum::routing::get(move || {
            let rows = engine_rows(&observer, &pipelines);
            async move { axum::Json(rows) }
        }),
    );
    let served = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
    if let Err(error) = served {
        tracing::warn!("the admin endpoint stopped: {error}");
    }
}

/// Most characters of the last error shown in the table; `-o json` has it whole.
const ERROR_WIDTH: usize = 60;

/// An aligned table: one row per trigger, the TriggerService's columns repeated.
fn table(rows: &[TriggerRow], now: DateTime<Utc>) -> String {
    let header = [
        "NAMESPACE",
        "TRIGGERSERVICE",
        "READY",
        "TRIGGER",
        "SOURCE → FILTER → DESTINATIONS",
        "RECEIVED",
        "FILTERED",
        "FIRED",
        "FAILED",
        "LAST FIRED",
        "ACTIVE",
        "LAST ERROR",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            vec![
                if row.namespace.is_empty() { "-".to_string() } else { row.namespace.clone() },
                row.service.clone(),
                row.ready.clone(),
                if row.running { row.trigger.clone() } else { format!("{} (not running)", row.trigger) },
                row.pipeline.clone(),
                row.received.to_string(),
                row.filtered.to_string(),
                row.fired.to_string(),
                row.failed.to_string(),
                row.last_fired.as_deref().map_or_else(|| "-".to_string(), |at| ago(at, now)),
                row.active_events.to_string(),
                row.last_error.as_deref().map_or_else(|| "-".to_string(), |e| cut(e, ERROR_WIDTH)),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut text = line(header.to_vec());
    for row in &cells {
        text.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    text
}

/// `3m ago` for an RFC 3339 time; the time itself when it cannot be read.
fn ago(at: &str, now: DateTime<Utc>) -> String {
    let Ok(at) = DateTime::parse_from_rfc3339(at) else { return at.to_string() };
    let seconds = (now - at.with_timezone(&Utc)).num_seconds().max(0);
    match seconds {
        0..60 => format!("{seconds}s ago"),
        60..3600 => format!("{}m ago", seconds / 60),
        3600..86400 => format!("{}h ago", seconds / 3600),
        _ => format!("{}d ago", seconds / 86400),
    }
}

fn cut(text: &str, width: usize) -> String {
    let text = text.replace('\n', " ");
    match text.char_indices().nth(width) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_aligns_columns_and_shows_ages() {
        let now = Utc::now();
        let row = TriggerRow {
            namespace: "apps".into(),
            service: "pod-doctor".into(),
            ready: "True".into(),
            trigger: "restarts".into(),
            pipeline: "k8s-events → filter → kagent, slack".into(),
            running: true,
            received: 41,
            filtered: 30,
            fired: 11,
            failed: 0,
            last_fired: Some(rfc3339(now - chrono::TimeDelta::minutes(3))),
            active_events: 2,
            last_error: None,
        };
        let text = table(&[row], now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].find("RECEIVED"), lines[1].find("41"), "{text}");
        assert!(lines[1].contains("3m ago"), "{text}");
        assert!(lines[1].ends_with("2       -"), "{text}");
    }
}
