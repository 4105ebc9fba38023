//! `ktrigger run`: load files, run every valid trigger, report the rest, drain on shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use ktrigger_core::{EngineOptions, LoadedConfig, load_paths, load_text};
use ktrigger_sources::{PathScope, WebhookListener};
use tokio_util::sync::CancellationToken;

use crate::cluster::ClusterArgs;
use crate::durations::parse_duration;
use crate::egress::EgressArgs;
use crate::engine_with;
use crate::limits::MemoryArgs;
use crate::plugins::PluginArgs;
use crate::state::{StateArgs, default_local_dir};
use crate::webhooks::WebhookLimits;

/// The trigger set `run` uses when no file is given: needs no cluster, shows output in seconds.
const QUICKSTART: &str = include_str!("../../../examples/quickstart.yaml");

/// Options of `ktrigger run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Files or directories of TriggerService YAML; the built-in quickstart when omitted.
    #[arg(short = 'f', long = "file")]
    files: Vec<PathBuf>,
    /// Evaluate everything but call no destination; print each decision and what would be sent.
    #[arg(long)]
    dry_run: bool,
    /// Address of the shared listener for `webhook` sources (port 0 picks a free port). Paths
    /// are used as written in the files.
    #[arg(long, default_value = "127.0.0.1:8090", env = "KTRIGGER_WEBHOOK_ADDR")]
    webhook_addr: SocketAddr,
    /// Limits of the webhook listener.
    #[command(flatten)]
    webhook_limits: WebhookLimits,
    /// OpenTelemetry tracing.
    #[command(flatten)]
    pub tracing: crate::telemetry::TracingArgs,
    /// How long deliveries already queued, and webhook requests in flight, may take to finish
    /// after a stop signal; webhook connections still open then are closed.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    shutdown_grace: Duration,
    /// How to reach a cluster, for Kubernetes sources and destinations.
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Where sources and destinations may connect.
    #[command(flatten)]
    egress: EgressArgs,
    /// Memory limits of queues and dedup keys.
    #[command(flatten)]
    memory: MemoryArgs,
    /// Address serving `GET /status` for `ktrigger status --endpoint` (port 0 picks a free
    /// port); off when not given.
    #[arg(long, env = "KTRIGGER_ADMIN_ADDR")]
    admin_addr: Option<SocketAddr>,
    /// Where state survives restarts.
    #[command(flatten)]
    state: StateArgs,
    /// Plugins providing more source and destination types.
    #[command(flatten)]
    plugins: PluginArgs,
}

/// Runs until SIGINT or SIGTERM.
pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = if args.files.is_empty() { load_text("quickstart", QUICKSTART) } else { load_paths(&args.files) };
    report_config(&config);
    if config.services.is_empty() {
        tracing::error!("no TriggerService to run");
        return Ok(ExitCode::from(2));
    }
    let state = args.state.open(default_local_dir(), args.dry_run)?;
    if let Some(moved) = &state.moved_aside {
        tracing::warn!(reason = %moved.reason, moved_to = %moved.to.display(),
            "the state file could not be used; moved to {}", moved.to.display());
    }
    let stop = CancellationToken::new();
    let uses_webhooks = config.services.iter().flat_map(|s| &s.spec.triggers).any(|t| t.source.type_name == "webhook");
    let webhooks = if uses_webhooks {
        let options = args.webhook_limits.options(PathScope::Global, args.shutdown_grace);
        WebhookListener::bind_with(args.webhook_addr, options).await?
    } else {
        WebhookListener::detached()
    };
    let cluster = args.cluster.connect(ktrigger_kube::IdentityPolicy::local()).await?;
    let options = args.memory.apply(EngineOptions { dry_run: args.dry_run, ..Default::default() });
    let store = state.store.clone();
    let plugins = args.plugins.start(true).await?;
    let mut engine = engine_with(webhooks.clone(), cluster.clone(), options, args.egress.local(), &plugins)?
        .store(state.store)
        .build();
    let mut started = 0;
    let mut pipelines = std::collections::BTreeMap::new();
    for service in &config.services {
        let report = engine.apply(&service.namespace, &service.name, &service.spec).await;
        for (id, summary) in &report.started {
            tracing::info!(trigger = %id, "loaded  trigger {id}: {summary}");
            pipelines.insert(id.clone(), summary.clone());
        }
        started += report.started.len();
    }
    if started == 0 {
        tracing::error!("no trigger could be loaded");
        return Ok(ExitCode::from(2));
    }
    // The engine holds what it runs; the parsed files are not needed any more.
    let on_cluster = uses_cluster(&config);
    drop(config);
    // Bound early (so a taken port fails at once) but served only now: a sender connecting while
    // the triggers load waits in the backlog instead of getting a 404 for a path not yet known.
    let listener = uses_webhooks.then(|| webhooks.spawn(stop.clone()));
    let mode = if args.dry_run { " (dry run: no destination is called)" } else { "" };
    if let Some(addr) = webhooks.local_addr() {
        tracing::info!(%addr, "webhook listener on http://{addr}");
    }
    let admin = match args.admin_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            let addr = listener.local_addr().unwrap_or(addr);
            tracing::info!(%addr, "admin endpoint on http://{addr}");
            let observer = engine.observer();
            Some(tokio::spawn(crate::status::serve_admin(listener, observer, Arc::new(pipelines), stop.clone())))
        }
        None => None,
    };
    if let Some(cluster) = cluster.description().filter(|_| on_cluster) {
        tracing::info!(cluster, "kubernetes cluster {cluster}");
    }
    let pending = store.metrics().pending_deliveries;
    tracing::info!(store = %store.describe(), pending, "state: {} ({pending} deliveries pending)", store.describe());
    tracing::info!(
        triggers = started,
        dry_run = args.dry_run,
        "ktrigger running {started} trigger(s){mode}; press Ctrl-C to stop"
    );
    wait_for_signal().await?;
    tracing::info!(grace = ?args.shutdown_grace, "stopping: draining deliveries (up to {:?})", args.shutdown_grace);
    // The listener takes no new connection from now on and closes what is left when the grace ends.
    stop.cancel();
    let listener_closed = async {
        if let Some(listener) = listener {
            let _ = listener.await;
        }
    };
    let (report, ()) = tokio::join!(engine.shutdown(args.shutdown_grace), listener_closed);
    plugins.shutdown().await;
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    for (id, s) in report.stats {
        tracing::info!(
            trigger = %id,
            received = s.received,
            filtered = s.filtered,
            fired = s.fired,
            delivered = s.delivered,
            failed = s.failed,
            dead_lettered = s.dead_lettered,
            queue_byte_limited = s.queue_byte_limited,
            backpressured = s.backpressured,
            "trigger {id}: received={} filtered={} fired={} delivered={} failed={} deadLettered={} queueByteLimited={} \
             backpressured={}",
            s.received, s.filtered, s.fired, s.delivered, s.failed, s.dead_lettered, s.queue_byte_limited,
            s.backpressured
        );
    }
    if report.kept > 0 {
        tracing::info!(kept = report.kept, store = %store.describe(),
            "{} deliveries not completed within the grace period are kept in {} for the next start",
            report.kept, store.describe());
    }
    if report.lost > 0 {
        tracing::error!(
            lost = report.lost,
            "{} deliveries were not completed before the grace period ended",
            report.lost
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether some trigger uses a Kubernetes source.
fn uses_cluster(config: &LoadedConfig) -> bool {
    let kube_types = [ktrigger_kube::resource_watcher::NAME, ktrigger_kube::k8s_events::NAME];
    config.services.iter().flat_map(|s| &s.spec.triggers).any(|t| kube_types.contains(&t.source.type_name.as_str()))
}

fn report_config(config: &LoadedConfig) {
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    for error in &config.errors {
        tracing::error!("skipped: {error}");
    }
}

pub(crate) async fn wait_for_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = terminate.recv() => {}
    }
    Ok(())
}
