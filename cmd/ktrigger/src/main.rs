//! `ktrigger`: the command-line entry point. Wiring only; the work happens in the library crates.

mod cluster;
mod controller;
mod convert;
mod durations;
mod egress;
mod eval;
mod inspect;
mod limits;
mod nats_state;
mod plugins;
mod run;
mod state;
mod status;
mod suggest;
mod telemetry;
mod validate;
mod webhooks;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use ktrigger_core::{EgressPolicy, Engine, EngineBuilder, EngineOptions, Registry};
use ktrigger_plugin::PluginManager;
use ktrigger_sources::WebhookListener;

/// The version with the commit it was built from (see build.rs).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("KTRIGGER_GIT_COMMIT"), ")");

/// A Kubernetes-native trigger engine: source → CEL filter → destinations.
#[derive(Debug, Parser)]
#[command(name = "ktrigger", version = VERSION, about, after_help = "Examples:
  ktrigger run                                  # the built-in quickstart: no cluster needed
  ktrigger run -f examples/slack.yaml --dry-run # what would be sent, and why events did not fire
  ktrigger validate -f examples/ -o json        # every problem, with file:line:column
  ktrigger eval --filter 'object.status.phase == \"Failed\"' --object examples/events/pod.json
  ktrigger sources cron                         # one source type: properties and an example
  ktrigger status -A                            # TriggerServices and their triggers in the cluster
  ktrigger controller --log-format json         # in a cluster")]
struct Cli {
    /// Log format on stderr: text, or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "KTRIGGER_LOG_FORMAT")]
    log_format: LogFormat,
    /// Which log lines to print: a level (error, warn, info, debug, trace) or per-module
    /// directives such as `info,ktrigger_core=debug`.
    #[arg(long, global = true, default_value = "info", env = "KTRIGGER_LOG")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// How a command prints what it found.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run triggers from files (or the built-in quickstart when no file is given).
    Run(Box<run::RunArgs>),
    /// Reconcile TriggerService objects in a cluster (the in-cluster mode).
    Controller(Box<controller::ControllerArgs>),
    /// Check files and list every problem; exits non-zero when there is one.
    #[command(after_help = "Examples:\n  \
        ktrigger validate -f examples/\n  \
        ktrigger validate -f triggers.yaml --strict   # unset {env} variables are errors\n  \
        ktrigger validate -f triggers/ -o json        # for CI and editors")]
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
        /// Output format: one problem per line, or a JSON or YAML report.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
        /// Plugins whose types the files may use.
        #[command(flatten)]
        plugins: plugins::PluginArgs,
    },
    /// Evaluate one CEL filter against a sample event (see examples/events/).
    #[command(after_help = "Examples:\n  \
        ktrigger eval --filter 'object.status.phase == \"Running\"' --object examples/events/pod.json\n  \
        ktrigger eval --filter 'event.preset == \"pod-restart\" && object.count >= 3' --event examples/events/k8s-event.json\n  \
        kubectl get pod web -o json | ktrigger eval --filter 'has(object.status.podIP)' --object -")]
    Eval {
        /// The CEL expression.
        #[arg(long)]
        filter: String,
        /// JSON or YAML file with some of `object`, `oldObject`, `event`, `context`, `now` (one with
        /// none of them is read as the object); `-` for stdin.
        #[arg(long, required_unless_present = "object", conflicts_with = "object")]
        event: Option<PathBuf>,
        /// JSON or YAML file of the object alone (a Pod, a Kubernetes Event, a webhook payload);
        /// `-` for stdin.
        #[arg(long)]
        object: Option<PathBuf>,
    },
    /// Convert kube-trigger configs and TriggerServices, and khook Hooks, into TriggerServices;
    /// prints them on stdout and a report of every change of meaning on stderr.
    Convert {
        /// Files or directories to convert.
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = convert::Format::Yaml)]
        output: convert::Format,
    },
    /// Print the TriggerService CRD.
    Crd,
    /// Print the JSON Schema of TriggerService files, with the properties of every source and
    /// destination type, for editors (yaml-language-server) and CI.
    #[command(after_help = "Examples:\n  ktrigger schema > triggerservice.schema.json\n  \
            # then, first line of a YAML file:\n  # yaml-language-server: $schema=./triggerservice.schema.json")]
    Schema {
        /// Plugins whose types are included too.
        #[command(flatten)]
        plugins: plugins::PluginArgs,
    },
    /// List every source type, or the one named, with its properties and an example.
    #[command(
        after_help = "Examples:\n  ktrigger sources\n  ktrigger sources webhook\n  ktrigger sources cron -o json"
    )]
    Sources {
        /// Only this type (a name or an alias).
        #[arg(value_name = "TYPE")]
        name: Option<String>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
        /// Plugins whose types are listed too.
        #[command(flatten)]
        plugins: plugins::PluginArgs,
    },
    /// List every destination type, or the one named, with its properties and an example.
    #[command(
        after_help = "Examples:\n  ktrigger destinations\n  ktrigger destinations slack\n  ktrigger destinations kagent -o yaml"
    )]
    Destinations {
        /// Only this type (a name or an alias).
        #[arg(value_name = "TYPE")]
        name: Option<String>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
        /// Plugins whose types are listed too.
        #[command(flatten)]
        plugins: plugins::PluginArgs,
    },
    /// A table of TriggerServices and their triggers: source → filter → destinations, counters,
    /// last fire, last error, active events. Also `kubectl ktrigger status` with the binary
    /// installed as `kubectl-ktrigger`.
    Status(Box<status::StatusArgs>),
    /// Print a shell completion script.
    #[command(after_help = "Examples:\n  \
        ktrigger completions bash > /etc/bash_completion.d/ktrigger\n  \
        ktrigger completions zsh > \"${fpath[1]}/_ktrigger\"\n  \
        ktrigger completions fish > ~/.config/fish/completions/ktrigger.fish")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the version and the commit it was built from.
    Version,
}

/// The process's allocator: jemalloc, with two arenas and freed pages returned to the system at
/// once (its options are fixed at build time, `.cargo/config.toml`). glibc's malloc kept 15–20 MiB
/// freed in per-thread arenas after the lists of a watch's start; the container's static (musl)
/// build allocates the same way as every other build.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // One crypto provider for every TLS client in the process (reqwest, kube).
    ktrigger_core::tls::ensure_crypto_provider();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let otlp = match &cli.command {
        Command::Run(args) => args.tracing.otlp_endpoint.clone(),
        Command::Controller(args) => args.tracing.otlp_endpoint.clone(),
        _ => None,
    };
    // An empty value is unset, as OpenTelemetry's variables have it.
    let otlp = otlp.filter(|endpoint| !endpoint.is_empty());
    let traces = match telemetry::init(cli.log_format, &cli.log_level, otlp.as_deref(), runtime.handle()) {
        Ok(traces) => traces,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // The long-running commands log; the others print for a person or a script.
    let logs = matches!(cli.command, Command::Run(_) | Command::Controller(_));
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(*args).await,
            Command::Controller(args) => controller::controller(*args).await,
            Command::Validate { files, event_mappings, strict, output, plugins } => {
                let plugins = plugins.start(false).await?;
                let result = validate::validate(&files, event_mappings.as_deref(), strict, output, &plugins);
                plugins.shutdown().await;
                result
            }
            Command::Eval { filter, event, object } => {
                let sample = match (&object, &event) {
                    (Some(object), _) => eval::Sample::Object(object),
                    (None, Some(event)) => eval::Sample::Context(event),
                    (None, None) => anyhow::bail!("give --event FILE or --object FILE"),
                };
                eval::eval(&filter, sample)
            }
            Command::Convert { files, output } => convert::convert(&files, output),
            Command::Crd => {
                print!("{}", ktrigger_api::crd_yaml());
                Ok(ExitCode::SUCCESS)
            }
            Command::Schema { plugins } => {
                let plugins = plugins.start(false).await?;
                let result = inspect::print_schema(&plugins);
                plugins.shutdown().await;
                result
            }
            Command::Sources { name, output, plugins } => {
                let plugins = plugins.start(false).await?;
                let result = inspect::list_sources(name.as_deref(), output, &plugins);
                plugins.shutdown().await;
                result
            }
            Command::Destinations { name, output, plugins } => {
                let plugins = plugins.start(false).await?;
                let result = inspect::list_destinations(name.as_deref(), output, &plugins);
                plugins.shutdown().await;
                result
            }
            Command::Status(args) => status::status(*args).await,
            Command::Completions { shell } => {
                let mut script = Vec::new();
                clap_complete::generate(shell, &mut Cli::command(), "ktrigger", &mut script);
                write_stdout(&script)
            }
            Command::Version => {
                println!("ktrigger {VERSION}");
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    traces.shutdown();
    match result {
        Ok(code) => code,
        Err(e) if logs => {
            tracing::error!("{e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Writes `bytes` to stdout; a reader that went away (`| head`) is not an error.
fn write_stdout(bytes: &[u8]) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// Every source and destination type, with webhook sources served by `webhooks`, and
/// Kubernetes ones checked (with the custom presets `cluster` knows) but never connected: for
/// commands that run nothing.
fn offline_registry(
    webhooks: Arc<WebhookListener>,
    cluster: ktrigger_kube::Cluster,
    plugins: &PluginManager,
) -> Registry {
    registry_for(webhooks, cluster, plugins)
}

/// An engine, to be given its store, that knows every source and destination type, with Kubernetes sources watching
/// `cluster`. Kubernetes sources and destinations, and the reading of `secretKeyRef` values, act
/// as each TriggerService's identity by the cluster's identity policy. Network sources and
/// destinations connect only where `egress` allows.
fn engine_with(
    webhooks: Arc<WebhookListener>,
    cluster: ktrigger_kube::Cluster,
    options: EngineOptions,
    egress: Arc<EgressPolicy>,
    plugins: &PluginManager,
) -> anyhow::Result<EngineBuilder> {
    let secrets = Arc::new(ktrigger_kube::KubeSecretReader::new(cluster.clone()));
    let mut registry = registry_for(webhooks, cluster, plugins);
    ktrigger_destinations::register_with_egress(&mut registry, egress.clone()).map_err(anyhow::Error::msg)?;
    ktrigger_sources::register_http_poller(&mut registry, egress);
    Ok(Engine::builder().registry(registry).options(options).secret_reader(secrets))
}

/// Every source and destination type: webhook sources served by `webhooks`, Kubernetes sources
/// and destinations on `cluster`, and the types of `plugins`.
fn registry_for(webhooks: Arc<WebhookListener>, cluster: ktrigger_kube::Cluster, plugins: &PluginManager) -> Registry {
    let mut registry = Registry::default();
    let mappings = cluster.event_mappings().clone();
    ktrigger_sources::register(&mut registry, webhooks);
    ktrigger_kube::register(&mut registry, cluster);
    ktrigger_destinations::register(&mut registry);
    plugins::add_plugins(&mut registry, plugins, &mappings);
    registry
}
