//! `ktrigger controller`: reconcile TriggerService objects in the cluster, with health probes,
//! metrics and optional leader election.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use clap::Args;
use k8s_openapi::api::core::v1::ObjectReference;
use ktrigger_controller::metrics::{
    EngineCollector, ServiceCollector, ServiceGauges, StoreCollector, WatchCounts, WatchStats, register_build_info,
};
use ktrigger_controller::{Compat, ControllerOptions, Readiness};
use ktrigger_core::{CredentialPolicy, EngineOptions, MovedAside, StateStore};
use ktrigger_kube::IdentityPolicy;
use ktrigger_sources::{PathScope, ServerLimits, WebhookListener};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio_util::sync::CancellationToken;

use crate::cluster::ClusterArgs;
use crate::durations::{parse_duration, parse_duration_or_zero};
use crate::egress::EgressArgs;
use crate::engine_with;
use crate::limits::MemoryArgs;
use crate::nats_state::NatsStateArgs;
use crate::plugins::PluginArgs;
use crate::run::wait_for_signal;
use crate::state::StateArgs;
use crate::webhooks::{WebhookCollector, WebhookLimits};

/// Options of `ktrigger controller`.
#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// How to reach the cluster.
    #[command(flatten)]
    cluster: ClusterArgs,
    /// OpenTelemetry tracing.
    #[command(flatten)]
    pub tracing: crate::telemetry::TracingArgs,
    /// Namespaces whose TriggerServices are reconciled (comma-separated); all when omitted.
    #[arg(long, alias = "namespace", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    /// Address of the shared listener for `webhook` sources; each TriggerService's paths are
    /// under `/<namespace>/<name>`.
    #[arg(long, default_value = "0.0.0.0:8090", env = "KTRIGGER_WEBHOOK_ADDR")]
    webhook_addr: SocketAddr,
    /// Limits of the webhook listener.
    #[command(flatten)]
    webhook_limits: WebhookLimits,
    /// Address serving `/metrics` (Prometheus text format).
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Address serving `/healthz` and `/readyz`.
    #[arg(long, default_value = "0.0.0.0:8081")]
    health_addr: SocketAddr,
    /// The shortest time between two status writes of a TriggerService whose counters alone
    /// changed; a change of its conditions or of which triggers run is written within a second.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    status_interval: Duration,
    /// How often the Secrets named by `secretKeyRef` are read again, so that a rotated Secret
    /// restarts the triggers using it; 0s: only when a TriggerService changes.
    #[arg(long, default_value = "10m", value_parser = parse_duration_or_zero)]
    secret_refresh: Duration,
    /// How long deliveries already queued, and requests in flight, may take to finish after a
    /// stop signal; connections still open then are closed.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    shutdown_grace: Duration,
    /// Where sources and destinations may connect.
    #[command(flatten)]
    egress: EgressArgs,
    /// Directory whose files `{file: PATH}` credential references may read (repeatable). Without
    /// one, TriggerServices cannot read any file of the controller (its own token included).
    #[arg(long = "allow-credential-files", value_name = "DIR")]
    allow_credential_files: Vec<PathBuf>,
    /// Prefix of the environment variables `{env: NAME}` credential references may read
    /// (repeatable). Without one, TriggerServices cannot read the controller's environment.
    #[arg(long = "allow-credential-env", value_name = "PREFIX")]
    allow_credential_env: Vec<String>,
    /// ServiceAccount (in each TriggerService's namespace) that TriggerServices without
    /// `serviceAccountName` read and act as; unset: the controller's own identity, confined to
    /// the TriggerService's namespace.
    #[arg(long, value_name = "NAME")]
    default_service_account: Option<String>,
    /// Let TriggerServices with no identity at all (no `serviceAccountName`, no
    /// --default-service-account) read and act outside their own namespace with the
    /// controller's identity. Off: only in their namespace.
    #[arg(long)]
    allow_cluster_wide_actions: bool,
    /// Run only while holding a Lease, so that one of several replicas delivers.
    #[arg(long)]
    leader_elect: bool,
    /// Name of the Lease used for leader election.
    #[arg(long, default_value = "ktrigger-controller")]
    lease_name: String,
    /// Namespace of the Lease; default the pod's namespace (POD_NAMESPACE), else `default`.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// How long a leader's Lease stays valid without renewal (whole seconds, at least 2s).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    lease_duration: Duration,
    /// Memory limits of queues and dedup keys.
    #[command(flatten)]
    memory: MemoryArgs,
    /// Where state survives restarts.
    #[command(flatten)]
    state: StateArgs,
    /// Plugins providing more source and destination types (the file mounted from a ConfigMap).
    #[command(flatten)]
    plugins: PluginArgs,
    /// Also reconcile these kinds of objects, converted as `ktrigger convert` converts them
    /// (comma-separated): `khook` (kagent.dev/v1alpha2 Hooks), `kube-trigger`
    /// (standard.oam.dev/v1alpha1 TriggerServices). Their CRDs and RBAC are in config/compat.
    #[arg(long, value_delimiter = ',', value_name = "KINDS")]
    serve: Vec<Compat>,
    /// Base URL of kagent for served Hooks (khook's kagent API URL); default the kagent
    /// destination's, `http://kagent-controller.kagent:8083`.
    #[arg(long, value_name = "URL")]
    khook_kagent_url: Option<String>,
    // State kept in NATS JetStream for replicas (--state, --state-*), instead of --state-dir.
    /// Where replicas keep their state.
    #[command(flatten)]
    nats_state: NatsStateArgs,
    // End of the NATS JetStream state flags.
}

/// The leadership of this replica: a channel that says whether it holds the Lease, and the
/// task that renews it (and releases it once the channel is dropped).
struct Leadership {
    leading: tokio::sync::watch::Receiver<bool>,
    renewer: tokio::task::JoinHandle<Result<LeaseManager, LeaseManagerError>>,
}

async fn elect(client: kube::Client, args: &ControllerArgs) -> anyhow::Result<Leadership> {
    let duration = args.lease_duration.as_secs();
    anyhow::ensure!(duration >= 2, "--lease-duration must be at least 2s");
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| format!("ktrigger-{}", uuid::Uuid::new_v4()));
    let manager = LeaseManagerBuilder::new(client, &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_identity(identity)
        .with_duration(duration)
        .with_grace((duration / 3).max(1))
        .build()
        .await?;
    let (leading, renewer) = manager.watch().await;
    Ok(Leadership { leading, renewer })
}

/// `/readyz`: ready once this replica leads (or leader election is off) and has listed every
/// TriggerService, while no Kubernetes watch has been failing for longer than allowed.
fn ready(readiness: &Readiness, cluster: &ktrigger_kube::Cluster, store: &dyn StateStore) -> (StatusCode, String) {
    if let Err(reason) = store.health() {
        return (StatusCode::SERVICE_UNAVAILABLE, reason);
    }
    if !readiness.is_ready() {
        return (StatusCode::SERVICE_UNAVAILABLE, "not leading, or TriggerServices not listed yet".into());
    }
    let unhealthy = cluster.hub().unhealthy();
    if !unhealthy.is_empty() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("watches failing: {}", unhealthy.join("; ")));
    }
    (StatusCode::OK, "ready".into())
}

/// The start-up line saying who TriggerServices without `serviceAccountName` act as.
fn identity_rule(identities: &IdentityPolicy) -> String {
    match (&identities.default_service_account, identities.confine_own) {
        (Some(name), _) => {
            format!("TriggerServices without serviceAccountName act as the ServiceAccount {name} of their namespace")
        }
        (None, true) => {
            "TriggerServices without serviceAccountName act as the controller, only in their own namespace".to_string()
        }
        (None, false) => {
            "TriggerServices without serviceAccountName act as the controller in every namespace".to_string()
        }
    }
}

/// Serves `router` on `listener` until `stop` fires; connections still open `grace` later are closed.
fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    stop: &CancellationToken,
    grace: Duration,
) -> tokio::task::JoinHandle<()> {
    let limits = ServerLimits { shutdown_grace: grace, ..ServerLimits::default() };
    tokio::spawn(ktrigger_sources::server::serve(listener, router, limits, Arc::default(), stop.clone()))
}

async fn export(
    registry: Arc<prometheus_client::registry::Registry>,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &registry) {
        Ok(()) => {
            (StatusCode::OK, [("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
        }
        Err(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, [("content-type", "text/plain")], "metrics could not be encoded".into())
        }
    }
}

/// Waits until this replica leads; false when a stop signal came first.
async fn wait_for_leadership(leadership: &mut Leadership) -> anyhow::Result<bool> {
    loop {
        if *leadership.leading.borrow_and_update() {
            return Ok(true);
        }
        tokio::select! {
            signal = wait_for_signal() => {
                signal?;
                return Ok(false);
            }
            changed = leadership.leading.changed() => changed?,
        }
    }
}

/// Resolves when this replica stops leading; never when leader election is off.
async fn lost_leadership(leadership: &mut Option<Leadership>) {
    let Some(leadership) = leadership else { return std::future::pending().await };
    while *leadership.leading.borrow_and_update() {
        if leadership.leading.changed().await.is_err() {
            return;
        }
    }
}

/// Runs until SIGINT or SIGTERM.
pub async fn controller(args: ControllerArgs) -> anyhow::Result<ExitCode> {
    let identities = IdentityPolicy::controller(args.default_service_account.clone(), args.allow_cluster_wide_actions)
        .map_err(anyhow::Error::msg)?;
    let cluster = args.cluster.connect(identities).await?;
    let Some(client) = cluster.kube_client() else {
        let reason = cluster.unavailable_reason().unwrap_or("no cluster configured");
        tracing::error!("the controller needs a cluster ({reason}): use --kubeconfig, KUBECONFIG or run it in a pod");
        return Ok(ExitCode::from(2));
    };
    let credentials = CredentialPolicy::restricted(&args.allow_credential_files, &args.allow_credential_env)
        .map_err(anyhow::Error::msg)?;
    let egress = args.egress.shared(&cluster).await;
    let stop = CancellationToken::new();
    let options = args.webhook_limits.options(PathScope::PerTriggerService, args.shutdown_grace);
    let webhooks = WebhookListener::bind_with(args.webhook_addr, options).await?;
    let listener = webhooks.spawn(stop.clone());
    let store = match args.nats_state.connect().await? {
        Some(store) => store,
        None => {
            let state = args.state.open(None, false)?;
            if let Some(moved) = &state.moved_aside {
                tracing::warn!(reason = %moved.reason, moved_to = %moved.to.display(),
                    "the state file could not be used; moved to {}", moved.to.display());
                announce_moved_aside(&client, moved).await;
            }
            state.store
        }
    };
    let readiness = Readiness::default();
    let health = tokio::net::TcpListener::bind(args.health_addr).await?;
    let health_addr = health.local_addr().unwrap_or(args.health_addr);
    let probes = Router::new().route("/healthz", get(|| async { "ok" })).route(
        "/readyz",
        get({
            let (readiness, cluster, store) = (readiness.clone(), cluster.clone(), store.clone());
            move || async move { ready(&readiness, &cluster, store.as_ref()) }
        }),
    );
    let health_server = serve(health, probes, &stop, args.shutdown_grace);
    let options = args.memory.apply(EngineOptions { credentials, ..EngineOptions::default() });
    let plugins = args.plugins.start(true).await?;
    let engine =
        engine_with(webhooks.clone(), cluster.clone(), options, egress, &plugins)?.store(store.clone()).build();
    let hub = cluster.clone();
    let watch_counts: WatchCounts = Arc::new(move || {
        let hub = hub.hub();
        WatchStats { open: hub.open_watches(), opened: hub.watches_opened(), restarts: hub.watch_restarts() }
    });
    let mut metrics = EngineCollector::registry(engine.observer(), Some(watch_counts));
    metrics.register_collector(Box::new(WebhookCollector(webhooks.clone())));
    metrics.register_collector(Box::new(StoreCollector(store.clone())));
    let gauges = Arc::new(ServiceGauges::default());
    metrics.register_collector(Box::new(ServiceCollector(gauges.clone())));
    register_build_info(&mut metrics, env!("CARGO_PKG_VERSION"), env!("KTRIGGER_GIT_COMMIT"));
    let metrics = Arc::new(metrics);
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_addr).await?;
    let metrics_addr = metrics_listener.local_addr().unwrap_or(args.metrics_addr);
    let metrics_router = Router::new().route("/metrics", get(move || export(metrics.clone())));
    let metrics_server = serve(metrics_listener, metrics_router, &stop, args.shutdown_grace);
    let description = cluster.description().unwrap_or("(in-cluster)");
    tracing::info!(cluster = description, "kubernetes cluster {description}");
    tracing::info!("{}", identity_rule(cluster.identities()));
    let webhook_addr = webhooks.local_addr().unwrap_or(args.webhook_addr);
    tracing::info!(addr = %webhook_addr, "webhook listener on http://{webhook_addr}");
    tracing::info!(addr = %health_addr, "health probes on http://{health_addr}");
    tracing::info!(addr = %metrics_addr, "metrics on http://{metrics_addr}/metrics");
    let pending = store.metrics().pending_deliveries;
    tracing::info!(store = %store.describe(), pending, "state: {} ({pending} deliveries pending)", store.describe());
    let lease = format!("{}/{}", args.lease_namespace, args.lease_name);
    let mut leadership = if args.leader_elect { Some(elect(client.clone(), &args).await?) } else { None };
    if let Some(leadership) = &mut leadership {
        tracing::info!(lease = %lease, "waiting to lead (lease {lease})");
        if !wait_for_leadership(leadership).await? {
            stop.cancel();
            return Ok(ExitCode::SUCCESS);
        }
        tracing::info!(lease = %lease, "leading (lease {lease})");
    }
    let options = ControllerOptions {
        namespaces: args.watch_namespaces,
        status_interval: args.status_interval,
        shutdown_grace: args.shutdown_grace,
        secret_refresh: args.secret_refresh,
        serve: args.serve,
        kagent_url: args.khook_kagent_url,
        gauges,
    };
    let scope =
        if options.namespaces.is_empty() { "all namespaces".to_string() } else { options.namespaces.join(", ") };
    let served: String = options.serve.iter().map(|kind| format!(", {kind}")).collect();
    tracing::info!("ktrigger controller reconciling TriggerServices{served} in {scope}; press Ctrl-C to stop");
    let cancel = CancellationToken::new();
    let reconciler = tokio::spawn(ktrigger_controller::run(client, engine, options, readiness, cancel.clone()));
    let lost = tokio::select! {
        signal = wait_for_signal() => {
            signal?;
            false
        }
        _ = lost_leadership(&mut leadership) => true,
    };
    if lost {
        tracing::error!("lost the lease to another replica; stopping so that only the leader delivers");
    }
    tracing::info!(grace = ?args.shutdown_grace, "stopping: draining deliveries (up to {:?})", args.shutdown_grace);
    cancel.cancel();
    // Listeners take no new connection from now on and close what is left when the grace ends.
    stop.cancel();
    let (report, _, _, _) = tokio::join!(reconciler, listener, health_server, metrics_server);
    let report = report?;
    plugins.shutdown().await;
    if let Some(Leadership { leading, renewer }) = leadership {
        // Dropping the channel makes the renewer release the Lease for the next replica.
        drop(leading);
        match renewer.await {
            Ok(Ok(_)) => tracing::info!("lease released"),
            Ok(Err(error)) => tracing::warn!("the lease could not be released: {error}"),
            Err(error) => tracing::warn!("the lease renewer failed: {error}"),
        }
    }
    if lost {
        return Ok(ExitCode::FAILURE);
    }
    if report.kept > 0 {
        tracing::info!(kept = report.kept, store = %store.describe(),
            "{} deliveries not completed within the grace period are kept in {}", report.kept, store.describe());
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

/// Tells the cluster, with a Warning Event on this controller's Pod (POD_NAME, POD_NAMESPACE),
/// that its state file could not be used and was moved aside.
async fn announce_moved_aside(client: &kube::Client, moved: &MovedAside) {
    let (Ok(name), Ok(namespace)) = (std::env::var("POD_NAME"), std::env::var("POD_NAMESPACE")) else { return };
    let recorder = Recorder::new(client.clone(), Reporter::from("ktrigger-controller"));
    let pod = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(name),
        namespace: Some(namespace),
        ..ObjectReference::default()
    };
    let event = Event {
        type_: EventType::Warning,
        reason: "StateFileMovedAside".into(),
        note: Some(format!(
            "state file unusable ({}); moved to {}, started a fresh one",
            moved.reason,
            moved.to.display()
        )),
        action: "OpenState".into(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, &pod).await {
        tracing::warn!(%error, "cannot record the state file Event");
    }
}
