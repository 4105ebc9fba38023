//! `ktrigger`: the command-line entry point. Wiring only; the work happens in the library crates.

mod cluster;
mod controller;
mod egress;
mod inspect;
mod limits;
mod nats_state;
mod run;
mod state;
mod webhooks;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use ktrigger_core::egress::EgressPolicy;
use ktrigger_core::engine::{Engine, EngineOptions};
use ktrigger_core::registry::Registry;
use ktrigger_destinations::kube::KubeTarget;
use ktrigger_destinations::kube::secrets::KubeSecretReader;
use ktrigger_sources::WebhookListener;

/// A Kubernetes-native trigger engine: source → CEL filter → destinations.
#[derive(Debug, Parser)]
#[command(name = "ktrigger", version, about)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "KTRIGGER_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run triggers from files (or the built-in quickstart when no file is given).
    Run(Box<run::RunArgs>),
    /// Reconcile TriggerService objects in a cluster (the in-cluster mode).
    Controller(Box<controller::ControllerArgs>),
    /// Check files and list every problem; exits non-zero when there is one.
    Validate {
        /// Files or directories of TriggerService YAML.
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
        /// YAML file of custom k8s-events presets, as given to `run` and `controller`.
        #[arg(long)]
        event_mappings: Option<PathBuf>,
        /// Unset `{env}` variables and unreadable `{file}` credentials are errors, not warnings.
        #[arg(long)]
        strict: bool,
    },
    /// Evaluate one CEL filter against a document holding the context names (object, event, ...).
    Eval {
        /// The CEL expression.
        #[arg(long)]
        filter: String,
        /// JSON or YAML file with `object`, `oldObject`, `event`, `context`, `now`; `-` for stdin.
        #[arg(long)]
        event: PathBuf,
    },
    /// Print the TriggerService CRD.
    Crd,
    /// List every source type with its properties and an example.
    Sources,
    /// List every destination type with its properties and an example.
    Destinations,
    /// Print the version.
    Version,
}

fn main() -> ExitCode {
    // One crypto provider for every TLS client in the process (reqwest, kube).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(*args).await,
            Command::Controller(args) => controller::controller(*args).await,
            Command::Validate { files, event_mappings, strict } => {
                inspect::validate(&files, event_mappings.as_deref(), strict)
            }
            Command::Eval { filter, event } => inspect::eval(&filter, &event),
            Command::Crd => {
                print!("{}", ktrigger_api::crd_yaml());
                Ok(ExitCode::SUCCESS)
            }
            Command::Sources => inspect::list_sources(),
            Command::Destinations => inspect::list_destinations(),
            Command::Version => {
                println!("ktrigger {}", env!("CARGO_PKG_VERSION"));
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KTRIGGER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Every source and destination type, with webhook sources served by `webhooks`, and
/// Kubernetes ones checked (with the custom presets `cluster` knows) but never connected: for
/// commands that run nothing.
fn offline_registry(webhooks: Arc<WebhookListener>, cluster: ktrigger_kube::Cluster) -> Registry {
    registry_for(webhooks, cluster, KubeTarget::new(None))
}

/// An engine that knows every source and destination type, with Kubernetes sources watching
/// `cluster`. Kubernetes sources and destinations, and the reading of `secretKeyRef` values, act
/// as each TriggerService's identity by the cluster's identity policy. Network sources and
/// destinations connect only where `egress` allows.
fn engine_with(
    webhooks: Arc<WebhookListener>,
    cluster: ktrigger_kube::Cluster,
    options: EngineOptions,
    egress: Arc<EgressPolicy>,
) -> anyhow::Result<Engine> {
    let target = KubeTarget::new(cluster.kube_client()).with_identities(cluster.identities().clone());
    let secrets = Arc::new(KubeSecretReader::new(target.clone()));
    let mut registry = registry_for(webhooks, cluster, target);
    ktrigger_destinations::register_with_egress(&mut registry, egress.clone()).map_err(anyhow::Error::msg)?;
    ktrigger_sources::register_http_poller(&mut registry, egress);
    Ok(Engine::new(Arc::new(registry), options).with_secret_reader(secrets))
}

/// Every source and destination type: webhook sources served by `webhooks`, Kubernetes sources
/// on `cluster`, Kubernetes destinations acting on `target`.
fn registry_for(webhooks: Arc<WebhookListener>, cluster: ktrigger_kube::Cluster, target: KubeTarget) -> Registry {
    let mut registry = Registry::default();
    ktrigger_sources::register(&mut registry, webhooks);
    ktrigger_kube::register(&mut registry, cluster);
    ktrigger_destinations::register(&mut registry);
    ktrigger_destinations::register_kube(&mut registry, target);
    registry
}
