//! An in-process HTTP server that speaks the Kubernetes API closely enough for kube-rs and
//! `kubectl`, for tests that cannot reach a real API server.
//!
//! It serves discovery, the built-in resources the project touches (namespaces, configmaps,
//! secrets, pods, services, serviceaccounts, events, nodes, deployments, jobs, leases, CRDs and a
//! few more) and every resource a CustomResourceDefinition registers: list with label and field
//! selectors and pagination, watch with resourceVersion replay and bookmarks, get, create,
//! update, merge/JSON/strategic/apply patches, delete, and the status subresource. Objects are
//! plain JSON. Custom resources get what their CRD's schema asks of the API server's CEL
//! validation: `x-kubernetes-validations` rules are enforced, and `null`s in fields that are not
//! `nullable` dropped (see the `validation` module for what is not enforced); built-in resources
//! are not validated. No controller runs (no garbage collection, no pods behind deployments).
//!
//! The server runs on the tokio runtime that calls [`TestCluster::start`]: a test must keep that
//! runtime running while other processes talk to the cluster, so run `kubectl` or a built binary
//! with `tokio::process` (or from a multi-threaded runtime), not with a blocking
//! `std::process::Command` on a current-thread runtime.
//!
//! ```no_run
//! # async fn example() {
//! let cluster = ktrigger_testcluster::TestCluster::start().await;
//! let client = cluster.client().await;
//! cluster.faults().gone_on_next_watch("configmaps");
//! # drop(client);
//! # }
//! ```

#![deny(missing_docs)]

mod faults;
mod patch;
mod registry;
mod selector;
mod server;
mod shared;
mod status;
mod store;
mod target;
mod validation;
mod watch;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use faults::{DISCOVERY, Faults};
pub use target::TestTarget;

/// Tunables of a test cluster.
#[derive(Clone, Debug)]
pub struct Config {
    /// How many changes the event log keeps; watches from older resourceVersions get 410 Gone.
    pub event_log_capacity: usize,
    /// How often watches that allow bookmarks receive a BOOKMARK event.
    pub bookmark_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config { event_log_capacity: 1000, bookmark_interval: Duration::from_secs(1) }
    }
}

/// One request the cluster received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// The HTTP method, e.g. `GET`.
    pub method: String,
    /// The path and query, e.g. `/api/v1/namespaces/default/configmaps?watch=true`.
    pub uri: String,
    /// The `Impersonate-User` header, if any.
    pub impersonate_user: Option<String>,
    /// The `Impersonate-Group` headers.
    pub impersonate_groups: Vec<String>,
    /// The `User-Agent` header, if any.
    pub user_agent: Option<String>,
}

/// A running test cluster; it stops when dropped.
pub struct TestCluster {
    shared: Arc<shared::Shared>,
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl TestCluster {
    /// Starts a cluster with the default [`Config`] on a free port of 127.0.0.1.
    pub async fn start() -> TestCluster {
        Self::start_with(Config::default()).await
    }

    /// Starts a cluster with `config` on a free port of 127.0.0.1, served by a background task.
    pub async fn start_with(config: Config) -> TestCluster {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free port on 127.0.0.1 for the test cluster");
        let address = listener.local_addr().expect("the listener has an address").to_string();
        let shared = Arc::new(shared::Shared::new(config, address.clone()));
        let app = axum::Router::new().fallback(server::handle).with_state(shared.clone());
        let shutdown = shared.shutdown.clone();
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await {
                tracing::warn!(%error, "test cluster server stopped");
            }
        });
        TestCluster { shared, url: format!("http://{address}"), task }
    }

    /// The base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// A kubeconfig for this cluster (context `test`, namespace `default`, a static token).
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: test\n  cluster:\n    server: {url}\n\
             users:\n\
             - name: test\n  user:\n    token: test-token\n\
             contexts:\n\
             - name: test\n  context:\n    cluster: test\n    user: test\n    namespace: default\n\
             current-context: test\n\
             preferences: {{}}\n",
            url = self.url
        )
    }

    /// Writes [`kubeconfig_yaml`](Self::kubeconfig_yaml) to `path`, for kube-rs or `kubectl --kubeconfig`.
    pub fn write_kubeconfig(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())
    }

    /// A kube client configured from this cluster's kubeconfig.
    pub async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&self.kubeconfig_yaml()).expect("the kubeconfig parses");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
            .await
            .expect("the kubeconfig is usable");
        kube::Client::try_from(config).expect("a client for the test cluster")
    }

    /// The fault injector.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// How many watch requests were opened, over all resources.
    pub fn watch_requests(&self) -> u64 {
        self.shared.watch_counts().values().sum()
    }

    /// How many watch requests were opened for the resource `plural`, e.g. `"configmaps"`.
    pub fn watch_requests_for(&self, plural: &str) -> u64 {
        self.shared.watch_counts().get(plural).copied().unwrap_or(0)
    }

    /// How many watch streams of the resource `plural` are open right now.
    pub fn open_watches_for(&self, plural: &str) -> usize {
        self.shared.open_watches().get(plural).copied().unwrap_or(0)
    }

    /// Waits until at least `n` watch streams of `plural` are open, or `timeout` passes; returns
    /// whether they are.
    pub async fn wait_for_watches(&self, plural: &str, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.open_watches_for(plural) >= n {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Method and path (with query) of every request so far, in order.
    pub fn request_log(&self) -> Vec<(String, String)> {
        self.shared.requests().into_iter().map(|r| (r.method, r.uri)).collect()
    }

    /// Every request so far with the headers tests may assert on (impersonation, user agent).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.requests()
    }

    /// The newest resourceVersion the cluster has handed out.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().resource_version()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
        self.task.abort();
    }
}
