//! `ktrigger-sample-controller [--namespace NS] [--threadiness N]`: labels Deployments with the
//! generation it saw, using the kubeconfig (`KUBECONFIG`, `~/.kube/config`) or the in-cluster
//! service account, until Ctrl-C or SIGTERM.

use clap::Parser;
use ktrigger_handler::Metrics;
use tokio_util::sync::CancellationToken;

/// Labels Deployments with `ktrigger.dev/seen-generation`, the generation it saw.
#[derive(Parser)]
struct Args {
    /// Only the Deployments of this namespace (default: all namespaces).
    #[arg(long)]
    namespace: Option<String>,
    /// Workers handling Deployments at once.
    #[arg(long, default_value_t = 2)]
    threadiness: usize,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let args = Args::parse();
    ktrigger_kube::ensure_crypto_provider();
    let client = kube::Client::try_default().await?;
    let event_loop = ktrigger_sample_controller::event_loop(client, args.namespace.as_deref(), &Metrics::new())?;

    let cancel = CancellationToken::new();
    tokio::spawn({
        let cancel = cancel.clone();
        async move {
            let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            let sigterm = async {
                match terminate.as_mut() {
                    Some(terminate) => terminate.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = sigterm => {}
            }
            cancel.cancel();
        }
    });
    event_loop.run(cancel, args.threadiness).await?;
    Ok(())
}
