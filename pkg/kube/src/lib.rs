//! ktrigger's Kubernetes boundary: cluster access, the shared [`WatchHub`], the
//! `resource-watcher` and `k8s-events` source types, the destinations that act on the cluster
//! ([`actions`]) and the reader of `secretKeyRef` values ([`secrets`]).
//!
//! The binary makes one [`Cluster`] from `--kubeconfig`, `--context`, `KUBECONFIG` or the
//! in-cluster service account, and [`register`]s the source and destination types with it: one
//! client, one set of identities and one discovery cache for all of them. Loading a trigger only
//! checks its properties: kinds are resolved by discovery when the trigger runs, so
//! `ktrigger validate` works without a cluster ([`Cluster::offline`]). Sources list and watch,
//! destinations act and Secrets are read as their TriggerService's identity ([`identity`]).

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use ktrigger_core::EventMappings;
use ktrigger_core::PropertyError;
use ktrigger_core::sync::{lock, sleep_until};
use ktrigger_core::{BuildContext, Registry, SourceError};
use kube::api::ApiResource;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use kube::{Client, Config};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub mod access;
pub mod actions;
pub mod hub;
pub mod identity;
pub mod k8s_events;
pub mod position;
pub mod presets;
pub mod resource_watcher;
pub mod secrets;
pub mod selector;

pub use actions::ActingCluster;
pub use hub::{HubOptions, WatchHub};
use hub::{Subscriber, Subscription, WatchKey};
pub use identity::{Actor, Identity, IdentityPolicy};
/// Makes ring rustls's crypto provider before a client is built (the workspace's one helper,
/// re-exported for programs that embed the Kubernetes sources).
pub use ktrigger_core::tls::ensure_crypto_provider;
pub use presets::CustomPreset;
pub use secrets::KubeSecretReader;

/// Errors of this crate outside of loading properties (those are plain `String`s naming the property).
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No usable kubeconfig or in-cluster configuration.
    #[error("{0}")]
    Config(String),
    /// The event mappings file could not be read or has a bad entry.
    #[error("event mappings {path}: {message}")]
    Mappings {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the entry.
        message: String,
    },
}

impl KubeError {
    /// A short, stable label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            KubeError::Config(_) => "config",
            KubeError::Mappings { .. } => "mappings",
        }
    }
}

/// How to reach the cluster, from the command line.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// `--kubeconfig`: a kubeconfig file instead of `KUBECONFIG` / `~/.kube/config` / in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// `--context`: a context of the kubeconfig instead of its current one.
    pub context: Option<String>,
    /// `--event-mappings`: a YAML file of custom k8s-events presets.
    pub event_mappings: Option<PathBuf>,
    /// The WatchHub's tunables.
    pub hub: HubOptions,
    /// Who TriggerServices act as ([`IdentityPolicy::local`] for `ktrigger run`).
    pub identities: IdentityPolicy,
}

/// Where a configured client points.
#[derive(Default)]
struct Reached {
    description: Option<String>,
    api_server: Option<(String, u16)>,
}

struct ClusterState {
    /// The client, or why there is none.
    client: Result<Client, String>,
    identities: IdentityPolicy,
    /// Whether ServiceAccounts may share watches opened as other identities; `None` when
    /// sharing across identities is off or there is no client.
    reviews: Option<access::AccessReviews>,
    /// Where the client points, for the start-up report.
    description: Option<String>,
    /// The API server's host and port, when known from the configuration.
    api_server: Option<(String, u16)>,
    /// Loading only: a missing cluster is not a load error.
    offline: bool,
    hub: WatchHub,
    mappings: Vec<CustomPreset>,
    event_mappings: Arc<EventMappings>,
    /// Kinds discovery resolved, for sources and destinations alike.
    kinds: Mutex<HashMap<GroupVersionKind, ResolvedKind>>,
    /// One discovery at a time per kind (kinds are spread over these by hash): triggers that
    /// start together wait for the first one's answer instead of each opening a connection.
    discovering: [tokio::sync::Mutex<()>; DISCOVERY_LANES],
}

/// How many kinds can be discovered at the same time.
const DISCOVERY_LANES: usize = 16;
/// Longest wait for one discovery request: other askers of the kind (or of its lane), whatever
/// their TriggerService, wait for it.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// A kind resolved by discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedKind {
    /// Group, version, kind and plural.
    pub resource: ApiResource,
    /// Whether objects of the kind belong to a namespace.
    pub namespaced: bool,
    /// Whether the kind can be watched.
    pub watchable: bool,
}

/// The cluster the Kubernetes sources watch and the Kubernetes destinations act on: one client,
/// the identities TriggerServices act as, one discovery cache, the WatchHub the sources share,
/// and the custom presets. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    state: Arc<ClusterState>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("description", &self.state.description)
            .field("offline", &self.state.offline)
            .finish()
    }
}

impl Cluster {
    /// Connects as `options` say. Never fails for lack of a cluster: the reason is kept, and
    /// triggers that need the cluster fail to load with it while the others run. Fails only when
    /// the event mappings file is bad.
    pub async fn connect(options: &ClusterOptions) -> Result<Cluster, KubeError> {
        let (mappings, event_mappings) = match &options.event_mappings {
            Some(path) => (presets::load_mappings_file(path)?, presets::load_event_mappings(path)?),
            None => (Vec::new(), EventMappings::default()),
        };
        let (client, description, api_server) = match load_config(options).await {
            Ok((config, context)) => {
                let description = format!("{} (context {context})", config.cluster_url);
                let url = &config.cluster_url;
                let api_server = url.host().map(|host| {
                    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
                    (host, url.port_u16().unwrap_or(443))
                });
                match Client::try_from(config) {
                    Ok(client) => (Ok(client), Some(description), api_server),
                    Err(e) => (Err(format!("cannot make a client for {description}: {e}")), None, None),
                }
            }
            Err(KubeError::Config(reason)) => (Err(reason), None, None),
            Err(other) => (Err(other.to_string()), None, None),
        };
        let identities = options.identities.clone();
        let reached = Reached { description, api_server };
        let hub = options.hub.clone();
        Ok(Cluster::make(client, identities, reached, false, hub, (mappings, event_mappings)))
    }

    /// A cluster for checking triggers only (`ktrigger validate`, type listings): properties are
    /// checked, nothing connects, and sources fail if they are ever run.
    pub fn offline() -> Cluster {
        Cluster::offline_with_mappings(Vec::new())
    }

    /// Like [`Cluster::offline`], knowing the custom presets of an `--event-mappings` file.
    pub fn offline_with_mappings(mappings: Vec<CustomPreset>) -> Cluster {
        let reason = "this command does not connect to a cluster".to_string();
        let mappings = (mappings, EventMappings::default());
        Cluster::make(Err(reason), IdentityPolicy::local(), Reached::default(), true, HubOptions::default(), mappings)
    }

    /// A cluster reached through `client`, giving TriggerServices identities by `identities`
    /// (tests and embedding programs).
    pub fn with_client(
        client: Client,
        identities: IdentityPolicy,
        hub: HubOptions,
        mappings: Vec<CustomPreset>,
    ) -> Cluster {
        Cluster::make(Ok(client), identities, Reached::default(), false, hub, (mappings, EventMappings::default()))
    }

    fn make(
        client: Result<Client, String>,
        identities: IdentityPolicy,
        reached: Reached,
        offline: bool,
        hub: HubOptions,
        (mappings, event_mappings): (Vec<CustomPreset>, EventMappings),
    ) -> Cluster {
        let ttl = hub.access_review_ttl;
        let reviews = match &client {
            Ok(client) if !ttl.is_zero() => Some(access::AccessReviews::new(client.clone(), ttl)),
            _ => None,
        };
        Cluster {
            state: Arc::new(ClusterState {
                client,
                identities,
                reviews,
                description: reached.description,
                api_server: reached.api_server,
                offline,
                hub: WatchHub::new(hub),
                mappings,
                event_mappings: Arc::new(event_mappings),
                kinds: Mutex::new(HashMap::new()),
                discovering: std::array::from_fn(|_| tokio::sync::Mutex::new(())),
            }),
        }
    }

    /// Where the client points (server URL and context), when there is one.
    pub fn description(&self) -> Option<&str> {
        self.state.description.as_deref()
    }

    /// The shared WatchHub.
    pub fn hub(&self) -> &WatchHub {
        &self.state.hub
    }

    /// The custom presets of `--event-mappings`.
    pub fn mappings(&self) -> &[CustomPreset] {
        &self.state.mappings
    }

    /// The khook-format entries of `--event-mappings`: severity and tags by source and event type.
    pub fn event_mappings(&self) -> &Arc<EventMappings> {
        &self.state.event_mappings
    }

    /// Called when a trigger that needs the cluster loads: an error when there is no cluster.
    fn check_available(&self) -> Result<(), PropertyError> {
        match &self.state.client {
            Ok(_) => Ok(()),
            Err(_) if self.state.offline => Ok(()),
            Err(reason) => Err(PropertyError::whole(format!(
                "this source needs a Kubernetes cluster, and none is usable: {reason}"
            ))),
        }
    }

    /// The client (as this process's own identity), when a cluster is configured.
    pub fn kube_client(&self) -> Option<Client> {
        self.state.client.clone().ok()
    }

    /// The API server's host and port, when the configuration names them (not for
    /// [`Cluster::with_client`]).
    pub fn api_server(&self) -> Option<(&str, u16)> {
        self.state.api_server.as_ref().map(|(host, port)| (host.as_str(), *port))
    }

    /// Who TriggerServices act as on this cluster.
    pub fn identities(&self) -> &IdentityPolicy {
        &self.state.identities
    }

    /// Why there is no client, when there is none.
    pub fn unavailable_reason(&self) -> Option<&str> {
        self.state.client.as_ref().err().map(String::as_str)
    }

    fn client(&self) -> Result<Client, SourceError> {
        self.state.client.clone().map_err(|reason| SourceError(format!("no Kubernetes cluster: {reason}")))
    }

    /// The actor of the trigger being built, by this cluster's [`IdentityPolicy`], and the
    /// namespace its source watches: `namespace` as written, else the one it is confined to
    /// (all namespaces when it is not confined). A namespace it may not read is refused.
    fn scope(
        &self,
        context: &BuildContext,
        namespace: Option<String>,
    ) -> Result<(Actor, Option<String>), PropertyError> {
        let actor = self
            .state
            .identities
            .resolve(&context.trigger.namespace, context.service_account.as_deref())
            .map_err(PropertyError::whole)?;
        let namespace = namespace.filter(|ns| !ns.is_empty()).or_else(|| actor.confined_to.clone());
        actor.check_namespace(namespace.as_deref()).map_err(|e| PropertyError::new("namespace", e))?;
        Ok((actor, namespace))
    }

    /// Subscribes to the watch of `key`, or, for a ServiceAccount that a SubjectAccessReview
    /// allows to list and watch the same objects, to a running watch of them opened as another
    /// identity.
    async fn subscribe(&self, client: &Client, key: WatchKey, subscriber: Subscriber) -> Result<Subscription, String> {
        if let Some(reviews) = &self.state.reviews
            && let Some(host) = self.hub().shareable(&key)
            && reviews.may_watch(&key.identity, &host).await
        {
            tracing::info!(watch = %host, guest = %key.identity, trigger = %subscriber.trigger, "sharing the watch");
            let mut subscription = self.hub().subscribe(client, host, subscriber)?;
            subscription.guest = Some(key.identity);
            return Ok(subscription);
        }
        self.hub().subscribe(client, key, subscriber)
    }

    /// The kind `gvk` as discovery last resolved it, without asking the cluster.
    pub fn cached_kind(&self, gvk: &GroupVersionKind) -> Option<ResolvedKind> {
        lock(&self.state.kinds).get(gvk).cloned()
    }

    /// Resolves `gvk` by discovery through `client` (the asker's identity), once per kind for
    /// every source and destination of this cluster; failures are not kept. Askers of a kind
    /// being discovered wait for that answer.
    async fn discover(&self, client: &Client, gvk: &GroupVersionKind) -> Result<ResolvedKind, kube::Error> {
        if let Some(found) = self.cached_kind(gvk) {
            return Ok(found);
        }
        let lane = BuildHasherDefault::<DefaultHasher>::default().hash_one(gvk) as usize % DISCOVERY_LANES;
        let _turn = self.state.discovering[lane].lock().await;
        if let Some(found) = self.cached_kind(gvk) {
            return Ok(found);
        }
        let asked = tokio::time::timeout(DISCOVERY_TIMEOUT, kube::discovery::pinned_kind(client, gvk)).await;
        let (resource, capabilities) = asked
            .map_err(|_| kube::Error::Service(format!("no answer within {}s", DISCOVERY_TIMEOUT.as_secs()).into()))??;
        let found = ResolvedKind {
            resource,
            namespaced: capabilities.scope == Scope::Namespaced,
            watchable: capabilities.supports_operation(kube::discovery::verbs::WATCH),
        };
        lock(&self.state.kinds).insert(gvk.clone(), found.clone());
        Ok(found)
    }

    /// Finds the resource of `gvk` for a source, and whether it is namespaced; errors say what to
    /// fix, and that the source retries.
    async fn resolve(&self, client: &Client, gvk: &GroupVersionKind) -> Result<(ApiResource, bool), String> {
        let api_version = gvk.api_version();
        let found = self.discover(client, gvk).await.map_err(|e| match e {
            kube::Error::Discovery(_) => {
                format!("kind {} not found in apiVersion {api_version} (is its CRD installed?); retrying", gvk.kind)
            }
            kube::Error::Api(status) if status.code == 404 => format!(
                "apiVersion {api_version} is not served by the cluster (kind {}; is its CRD installed?); retrying",
                gvk.kind
            ),
            other => format!(
                "cannot look up kind {} in apiVersion {api_version} at {}: {other}",
                gvk.kind,
                self.description().unwrap_or("the API server")
            ),
        })?;
        if !found.watchable {
            return Err(format!("kind {} ({api_version}) cannot be watched", gvk.kind));
        }
        Ok((found.resource, found.namespaced))
    }
}

/// Loads the client configuration and names the context in use.
async fn load_config(options: &ClusterOptions) -> Result<(Config, String), KubeError> {
    let kube_options = KubeConfigOptions { context: options.context.clone(), ..Default::default() };
    let (kubeconfig, origin) = match &options.kubeconfig {
        Some(path) => (Some(read_kubeconfig(path)?), path.display().to_string()),
        None if options.context.is_some() => match Kubeconfig::read() {
            Ok(kubeconfig) => (Some(kubeconfig), "the kubeconfig (KUBECONFIG or ~/.kube/config)".to_string()),
            Err(e) => {
                return Err(KubeError::Config(format!(
                    "--context {:?} needs a kubeconfig, and none could be read (KUBECONFIG or ~/.kube/config): {e}",
                    options.context.as_deref().unwrap_or_default()
                )));
            }
        },
        None => (None, String::new()),
    };
    let Some(kubeconfig) = kubeconfig else {
        let config = Config::infer().await.map_err(|e| {
            KubeError::Config(format!(
                "no kubeconfig (--kubeconfig, KUBECONFIG or ~/.kube/config) and not running in a cluster: {e}"
            ))
        })?;
        let context =
            Kubeconfig::read().ok().and_then(|k| k.current_context).unwrap_or_else(|| "in-cluster".to_string());
        return Ok((config, context));
    };
    let context = match &options.context {
        Some(name) => {
            if !kubeconfig.contexts.iter().any(|c| &c.name == name) {
                let known: Vec<&str> = kubeconfig.contexts.iter().map(|c| c.name.as_str()).collect();
                return Err(KubeError::Config(format!(
                    "{origin} has no context {name:?}; its contexts: {}",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                )));
            }
            name.clone()
        }
        None => kubeconfig.current_context.clone().unwrap_or_default(),
    };
    let config = Config::from_custom_kubeconfig(kubeconfig, &kube_options)
        .await
        .map_err(|e| KubeError::Config(format!("cannot use {origin}: {e}")))?;
    Ok((config, context))
}

fn read_kubeconfig(path: &Path) -> Result<Kubeconfig, KubeError> {
    if !path.exists() {
        return Err(KubeError::Config(format!("kubeconfig {} does not exist", path.display())));
    }
    Kubeconfig::read_from(path)
        .map_err(|e| KubeError::Config(format!("cannot read kubeconfig {}: {e}", path.display())))
}

/// Adds the source types `resource-watcher` and `k8s-events`, and the destination types
/// `patch-resource`, `bump-application-revision`, `create-event`, `job` (alias `task`),
/// `create-event-listener` and `record-event`, all on `cluster`. Without a client the destinations
/// load but every delivery fails with [`actions::NEEDS_CLUSTER`].
pub fn register(registry: &mut Registry, cluster: Cluster) {
    registry.add_source_type(resource_watcher::ResourceWatcherFactory::new(cluster.clone()));
    registry.add_source_type(k8s_events::K8sEventsFactory::new(cluster.clone()));
    registry.add_destination_type(actions::patch_resource::PatchResourceFactory::new(cluster.clone()));
    registry.add_destination_type(actions::bump_app::BumpAppFactory::new(cluster.clone()));
    registry.add_destination_type(actions::create_event::CreateEventFactory::new(cluster.clone()));
    registry.add_destination_type(actions::event_listener::CreateEventListenerFactory::new(cluster.clone()));
    registry.add_destination_type(actions::event_listener::RecordEventFactory::new(cluster.clone()));
    registry.add_destination_type(actions::job::JobFactory::new(cluster));
}

/// How often a trigger sharing a watch opened as another identity asks again whether it may
/// (the answers themselves are kept for the access review TTL).
const GUEST_REVIEW_EVERY: Duration = Duration::from_millis(500);

/// When a subscriber must look at its watch again without being told of a change: a guest
/// regularly, to be reviewed again; others once the current run of errors has lasted long
/// enough to make the watch unhealthy (a new error or a recovery is a change it is told of).
fn next_look(health: &hub::Health, guest: bool, unhealthy_after: Duration) -> Option<Instant> {
    let now = Instant::now();
    if guest {
        return Some(now + GUEST_REVIEW_EVERY);
    }
    health.broken_since.map(|since| since + unhealthy_after).filter(|at| *at > now)
}

/// A source's place on the hub, kept across restarts of the source: it is made by the first
/// run and dropped (unsubscribing) with the source.
type Slot = tokio::sync::Mutex<Option<hub::Subscription>>;

/// Subscribes (once) and then waits until `cancel`, failing when the watch is refused or has
/// been broken for too long; the engine restarts the source after a backoff, and the watch (and
/// what it knows) stays in place meanwhile. A trigger sharing a watch opened as another identity
/// leaves it when a SubjectAccessReview no longer allows it, or when that watch fails (whose
/// errors name the other identity), and subscribes anew on its next run; so does a trigger whose
/// stored index stopped following the watch.
///
/// `subscribe` is boxed so that the source task keeps a pointer while it waits, not the state
/// the discovery, index load and subscription requests need while they run.
async fn run_subscribed(
    cluster: &Cluster,
    slot: &Slot,
    subscribe: BoxFuture<'_, Result<hub::Subscription, String>>,
    cancel: &CancellationToken,
) -> Result<(), SourceError> {
    let unhealthy_after = cluster.hub().options().unhealthy_after;
    let found = {
        let mut slot = slot.lock().await;
        let subscription = match slot.take() {
            Some(subscription) => subscription,
            None => tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                subscription = subscribe => subscription.map_err(SourceError)?,
            },
        };
        let found = (
            subscription.health(),
            subscription.key().clone(),
            subscription.guest.clone(),
            subscription.position_failed(),
        );
        *slot = Some(subscription);
        found
    };
    let (mut health, key, guest, mut position_failed) = found;
    loop {
        let verdict = health.borrow().verdict(Instant::now(), unhealthy_after);
        match (verdict, &guest) {
            (hub::Verdict::Fine, _) => {}
            (hub::Verdict::Refused(_) | hub::Verdict::Unhealthy(_), Some(guest)) => {
                slot.lock().await.take();
                return Err(SourceError(format!(
                    "the shared watch of {} failed; watching as {guest} from the next start",
                    key.scope()
                )));
            }
            (hub::Verdict::Refused(reason) | hub::Verdict::Unhealthy(reason), None) => {
                return Err(SourceError(reason));
            }
        }
        if let (Some(guest), Some(reviews)) = (&guest, &cluster.state.reviews)
            // boxed: the task keeps the loop's few fields, not the largest request it may make
            && !Box::pin(reviews.may_watch(guest, &key)).await
        {
            slot.lock().await.take();
            return Err(SourceError(format!(
                "{guest} may no longer list and watch {} (SubjectAccessReview); it stopped sharing the watch",
                key.scope()
            )));
        }
        if let Some(reason) = position_failed.as_ref().and_then(|failed| failed.borrow().clone()) {
            // Subscribing anew loads the stored index and reports what it has not recorded.
            slot.lock().await.take();
            return Err(SourceError(reason));
        }
        let look_again = next_look(&health.borrow(), guest.is_some(), unhealthy_after);
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            changed = health.changed() => if changed.is_err() {
                return Err(SourceError("the watch stopped".into()));
            },
            changed = async { position_failed.as_mut()?.changed().await.ok() }, if position_failed.is_some() => {
                // The writer ended without failing: its subscriber left the watch.
                if changed.is_none() {
                    position_failed = None;
                }
            },
            () = sleep_until(look_again) => {}
        }
    }
}
