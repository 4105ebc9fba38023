//! Where a library's Kubernetes test runs: the real cluster named by `KTRIGGER_TEST_KUBECONFIG`,
//! else a fresh in-process [`TestCluster`]; either way in a namespace of the test's own.

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{DeleteParams, PostParams};

use crate::TestCluster;

/// A cluster to test against and a namespace created for the test.
pub struct TestTarget {
    /// The in-process test cluster, when no real cluster is named (its fault injection is only
    /// there).
    pub test_cluster: Option<TestCluster>,
    /// A client of the cluster in use.
    pub client: kube::Client,
    /// The namespace created for the test: `<prefix>-<process id>`.
    pub namespace: String,
}

impl TestTarget {
    /// Connects to the cluster of `KTRIGGER_TEST_KUBECONFIG` when it is set, else starts a test
    /// cluster, and creates the namespace `<prefix>-<process id>`. Panics when it cannot: it is
    /// for tests.
    pub async fn start(prefix: &str) -> TestTarget {
        let (test_cluster, client) = match std::env::var("KTRIGGER_TEST_KUBECONFIG") {
            Ok(path) => {
                let kubeconfig =
                    kube::config::Kubeconfig::read_from(path).expect("KTRIGGER_TEST_KUBECONFIG is readable");
                let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                    .await
                    .expect("KTRIGGER_TEST_KUBECONFIG is usable");
                (None, kube::Client::try_from(config).expect("a client for KTRIGGER_TEST_KUBECONFIG"))
            }
            Err(_) => {
                let cluster = TestCluster::start().await;
                let client = cluster.client().await;
                (Some(cluster), client)
            }
        };
        let namespace = format!("{prefix}-{}", std::process::id());
        let body =
            serde_json::from_value(serde_json::json!({"metadata": {"name": namespace}})).expect("a Namespace object");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &body)
            .await
            .expect("the namespace is created");
        TestTarget { test_cluster, client, namespace }
    }

    /// Deletes the test's namespace from a real cluster (a test cluster goes away with it).
    pub async fn finish(self) {
        if self.test_cluster.is_none() {
            Api::<Namespace>::all(self.client.clone())
                .delete(&self.namespace, &DeleteParams::default())
                .await
                .expect("the namespace is deleted");
        }
    }
}
