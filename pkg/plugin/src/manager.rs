//! The plugin manager: starts or connects to every enabled plugin, asks each for its types,
//! checks its health, restarts a started plugin that exits or stops answering, and stops them all
//! on shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::process::Child;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::config::{Launch, PluginSpec, PluginsFile};
use crate::connect::{Connection, Timeouts, connect};
use crate::error::PluginError;
use crate::proto::plugin_client::PluginClient;
use crate::proto::{DescribeRequest, DescribeResponse, HealthRequest};

/// How often a running plugin is asked whether it is healthy.
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// Health checks in a row that may fail before a plugin counts as down.
const HEALTH_FAILURES: u32 = 3;
/// A plugin that stayed up this long starts its next restart backoff from the beginning.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Whether a plugin can be called now.
#[derive(Debug, Clone)]
enum State {
    Up(PluginClient<Channel>),
    Down(String),
}

/// One plugin as the sources and destinations it provides see it.
#[derive(Debug)]
pub struct Plugin {
    name: String,
    state: watch::Sender<State>,
    timeouts: Timeouts,
}

impl Plugin {
    /// The plugin's name from the plugins file.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Time limits of calls other than sources and deliveries.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// A client while the plugin is up; why not otherwise.
    pub fn client(&self) -> Result<PluginClient<Channel>, PluginError> {
        match &*self.state.borrow() {
            State::Up(client) => Ok(client.clone()),
            State::Down(reason) => {
                Err(PluginError::Unavailable { plugin: self.name.clone(), reason: format!("down: {reason}") })
            }
        }
    }

    fn set(&self, state: State) {
        self.state.send_replace(state);
    }
}

/// A plugin that started, with the types it described.
#[derive(Debug, Clone)]
pub struct Started {
    /// The plugin.
    pub plugin: Arc<Plugin>,
    /// Its source and destination types.
    pub types: DescribeResponse,
}

/// Every enabled plugin of a plugins file, running.
pub struct PluginManager {
    started: Vec<Started>,
    failed: Vec<PluginError>,
    disabled_sources: Vec<String>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl PluginManager {
    /// A manager with no plugin, for runs without `--plugins`.
    pub fn empty() -> PluginManager {
        PluginManager {
            started: Vec::new(),
            failed: Vec::new(),
            disabled_sources: Vec::new(),
            cancel: CancellationToken::new(),
            tasks: JoinSet::new(),
        }
    }

    /// Starts or connects to every enabled plugin of `file` and asks each for its types. A plugin
    /// that fails is reported by [`failed`](Self::failed); the others run.
    pub async fn start(file: &PluginsFile, timeouts: Timeouts) -> PluginManager {
        let mut manager = PluginManager { disabled_sources: file.disabled_sources.clone(), ..Self::empty() };
        for spec in file.plugins.iter().filter(|p| p.enabled) {
            match first_start(spec, timeouts).await {
                Ok((connection, types)) => {
                    let plugin = Arc::new(Plugin {
                        name: spec.name.clone(),
                        state: watch::Sender::new(State::Up(connection.client.clone())),
                        timeouts,
                    });
                    tracing::info!(
                        plugin = %spec.name,
                        sources = types.sources.len(),
                        destinations = types.destinations.len(),
                        "plugin started"
                    );
                    manager.tasks.spawn(supervise(spec.clone(), plugin.clone(), connection, manager.cancel.clone()));
                    manager.started.push(Started { plugin, types });
                }
                Err(error) => {
                    tracing::error!(plugin = %spec.name, error = %error, "plugin not started");
                    manager.failed.push(error);
                }
            }
        }
        manager
    }

    /// The plugins that started, with their types.
    pub fn started(&self) -> &[Started] {
        &self.started
    }

    /// Why each plugin that did not start failed.
    pub fn failed(&self) -> &[PluginError] {
        &self.failed
    }

    /// Built-in source types the plugins file turns off.
    pub fn disabled_sources(&self) -> &[String] {
        &self.disabled_sources
    }

    /// Stops every plugin: started programs are killed and waited for.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn first_start(spec: &PluginSpec, timeouts: Timeouts) -> Result<(Connection, DescribeResponse), PluginError> {
    let mut connection = connect(spec, timeouts).await?;
    // A sidecar may start after ktrigger: it gets as long to answer as a program to hand shake.
    let patience = match spec.launch() {
        Ok(Launch::Address(_)) => timeouts.handshake,
        _ => Duration::ZERO,
    };
    let started = Instant::now();
    let types = loop {
        let describe = tokio::time::timeout(timeouts.call, connection.client.describe(DescribeRequest {}));
        let reason = match describe.await {
            Ok(Ok(response)) => break Ok(response.into_inner()),
            Err(_) => format!("Describe did not answer within {:?}", timeouts.call),
            Ok(Err(status)) => format!("Describe failed: {}", status.message().chars().take(300).collect::<String>()),
        };
        if started.elapsed() >= patience {
            break Err(PluginError::Unavailable { plugin: spec.name.clone(), reason });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if types.is_err()
        && let Some(child) = connection.child.as_mut()
    {
        let _ = child.kill().await;
    }
    Ok((connection, types?))
}

/// Watches one plugin until `cancel`: marks it down when its process exits or its health checks
/// fail, restarts a started program with backoff, and kills it at the end.
async fn supervise(spec: PluginSpec, plugin: Arc<Plugin>, connection: Connection, cancel: CancellationToken) {
    let restarts = matches!(spec.launch(), Ok(Launch::Command(_)));
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter();
    let mut delays = backoff.without_max_times().build();
    let Connection { mut client, mut child } = connection;
    loop {
        let up_since = Instant::now();
        let reason = tokio::select! {
            _ = cancel.cancelled() => break,
            reason = exited(&mut child) => reason,
            reason = unhealthy(&mut client, plugin.timeouts()) => reason,
        };
        tracing::error!(plugin = %plugin.name(), reason = %reason, "plugin down");
        plugin.set(State::Down(reason));
        stop(&mut child).await;
        if !restarts {
            // A plugin at an address is not ours to restart: wait until it answers again.
            tokio::select! {
                _ = cancel.cancelled() => break,
                () = healthy_again(&mut client, plugin.timeouts()) => {}
            }
            tracing::info!(plugin = %plugin.name(), "plugin answers again");
            plugin.set(State::Up(client.clone()));
            continue;
        }
        if up_since.elapsed() >= HEALTHY_RUN {
            delays = backoff.without_max_times().build();
        }
        loop {
            let wait = delays.next().unwrap_or(Duration::from_secs(30));
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            match connect(&spec, plugin.timeouts()).await {
                Ok(connection) => {
                    tracing::info!(plugin = %plugin.name(), "plugin restarted");
                    client = connection.client;
                    child = connection.child;
                    plugin.set(State::Up(client.clone()));
                    break;
                }
                Err(error) => {
                    tracing::error!(plugin = %plugin.name(), error = %error, "plugin restart failed");
                    plugin.set(State::Down(error.to_string()));
                }
            }
        }
    }
    plugin.set(State::Down("stopped".into()));
    stop(&mut child).await;
}

/// Waits until the started program exits; never for a plugin at an address.
async fn exited(child: &mut Option<Child>) -> String {
    match child {
        Some(child) => match child.wait().await {
            Ok(status) => format!("process exited ({status})"),
            Err(e) => format!("process lost: {e}"),
        },
        None => std::future::pending().await,
    }
}

/// Waits until [`HEALTH_FAILURES`] health checks in a row failed.
async fn unhealthy(client: &mut PluginClient<Channel>, timeouts: Timeouts) -> String {
    let mut failures = 0;
    loop {
        tokio::time::sleep(HEALTH_INTERVAL).await;
        match health(client, timeouts).await {
            Ok(()) => failures = 0,
            Err(reason) => {
                failures += 1;
                if failures >= HEALTH_FAILURES {
                    return format!("{failures} health checks failed, the last: {reason}");
                }
            }
        }
    }
}

async fn healthy_again(client: &mut PluginClient<Channel>, timeouts: Timeouts) {
    loop {
        tokio::time::sleep(HEALTH_INTERVAL).await;
        if health(client, timeouts).await.is_ok() {
            return;
        }
    }
}

async fn health(client: &mut PluginClient<Channel>, timeouts: Timeouts) -> Result<(), String> {
    match tokio::time::timeout(timeouts.call, client.health(HealthRequest {})).await {
        Err(_) => Err(format!("no answer within {:?}", timeouts.call)),
        Ok(Err(status)) => Err(status.message().chars().take(200).collect()),
        Ok(Ok(_)) => Ok(()),
    }
}

async fn stop(child: &mut Option<Child>) {
    if let Some(mut process) = child.take() {
        let _ = process.kill().await;
    }
}
