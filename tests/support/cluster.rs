//! A cluster for end-to-end tests: the in-process test cluster, or the cluster named by
//! `KTRIGGER_TEST_KUBECONFIG`, with a namespace of the test's own that is deleted afterwards.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Event as KubeEvent, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use ktrigger_testcluster::TestCluster;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::{Client, Config};
use serde_json::{Value, json};

use super::{Running, repo, write_config};

/// How long end-to-end tests wait for something before they fail.
pub const WAIT: Duration = Duration::from_secs(30);

/// A cluster and a namespace of this test's own.
pub struct Env {
    /// Runs the test cluster and the client's requests.
    pub runtime: tokio::runtime::Runtime,
    /// The test cluster, unless `KTRIGGER_TEST_KUBECONFIG` is set.
    pub cluster: Option<TestCluster>,
    /// A client of the cluster.
    pub client: Client,
    /// The kubeconfig the binary is given.
    pub kubeconfig: PathBuf,
    /// The test's own namespace.
    pub namespace: String,
    crds: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Env {
    pub fn new(test: &str) -> Env {
        ktrigger_kube::ensure_crypto_provider();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cluster, kubeconfig, client) = match std::env::var_os("KTRIGGER_TEST_KUBECONFIG") {
            Some(path) => {
                let path = PathBuf::from(path);
                let client = runtime.block_on(external_client(&path));
                (None, path, client)
            }
            None => {
                let cluster = runtime.block_on(TestCluster::start());
                let path = dir.path().join("kubeconfig");
                cluster.write_kubeconfig(&path).unwrap();
                let client = runtime.block_on(cluster.client());
                (Some(cluster), path, client)
            }
        };
        let suffix = &uuid_suffix()[..8];
        let namespace = format!("ktrigger-e2e-{test}-{suffix}");
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let body = serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap();
        runtime.block_on(namespaces.create(&PostParams::default(), &body)).expect("the test namespace is created");
        Env { runtime, cluster, client, kubeconfig, namespace, crds: Vec::new(), _dir: dir }
    }

    pub fn external(&self) -> bool {
        self.cluster.is_none()
    }

    pub fn kubeconfig(&self) -> &str {
        self.kubeconfig.to_str().unwrap()
    }

    /// Starts `ktrigger run` on `config` against this cluster, with `extra` arguments, and waits
    /// until `watches` watches have synced.
    pub fn run(&self, config: &str, extra: &[&str], watches: usize) -> (Running, tempfile::TempDir) {
        let (dir, path) = write_config(config);
        let mut args = vec!["-f", path.to_str().unwrap(), "--kubeconfig", self.kubeconfig()];
        args.extend_from_slice(extra);
        let running = Running::start(&args);
        running
            .stderr
            .wait_until(&format!("{watches} synced watch(es)"), WAIT, |t| t.matches("watch synced").count() >= watches);
        (running, dir)
    }

    /// Runs the real `kubectl` against this cluster: whether it succeeded, and what it printed
    /// (standard output, then standard error).
    pub fn kubectl(&self, args: &[&str]) -> (bool, String) {
        let output = Command::new("kubectl")
            .args(["--kubeconfig", self.kubeconfig()])
            .args(args)
            .output()
            .expect("kubectl is installed (the tests use the real kubectl)");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.success(), text)
    }

    /// Applies the TriggerService CRD of config/crd with `kubectl` and waits until it is served.
    pub fn apply_trigger_service_crd(&self) {
        let crd = repo().join("config/crd/ktrigger.dev_triggerservices.yaml");
        let (ok, text) = self.kubectl(&["apply", "-f", crd.to_str().unwrap()]);
        assert!(ok, "kubectl apply of the CRD: {text}");
        let crd = "crd/triggerservices.ktrigger.dev";
        let (ok, text) = self.kubectl(&["wait", "--for", "condition=established", crd, "--timeout=30s"]);
        assert!(ok, "CRD established: {text}");
    }

    pub fn configmaps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub fn create_configmap(&self, name: &str, labels: Value) {
        let body = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "data": {"v": "1"}}));
        self.runtime.block_on(self.configmaps().create(&PostParams::default(), &body.unwrap())).unwrap();
    }

    pub fn set_data(&self, name: &str, value: &str) {
        let patch = Patch::Merge(json!({"data": {"v": value}}));
        self.runtime.block_on(self.configmaps().patch(name, &PatchParams::default(), &patch)).unwrap();
    }

    pub fn delete_configmap(&self, name: &str) {
        self.runtime.block_on(self.configmaps().delete(name, &DeleteParams::default())).unwrap();
    }

    /// Installs a namespaced CRD of kind `kind` in group `group`, version v1.
    pub fn install_crd(&mut self, group: &str, kind: &str, plural: &str) -> ApiResource {
        let name = format!("{plural}.{group}");
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let crd = json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": name},
            "spec": {"group": group, "scope": "Namespaced",
                     "names": {"plural": plural, "singular": kind.to_lowercase(), "kind": kind},
                     "versions": [{"name": "v1", "served": true, "storage": true,
                                   "schema": {"openAPIV3Schema": {"type": "object",
                                                                  "x-kubernetes-preserve-unknown-fields": true}}}]}
        });
        self.runtime.block_on(crds.create(&PostParams::default(), &serde_json::from_value(crd).unwrap())).unwrap();
        self.crds.push(name);
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", kind), plural)
    }

    pub fn custom_objects(&self, resource: &ApiResource) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.namespace, resource)
    }

    pub fn events(&self) -> Api<KubeEvent> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let _ = self.runtime.block_on(namespaces.delete(&self.namespace, &DeleteParams::default()));
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        for crd in &self.crds {
            let _ = self.runtime.block_on(crds.delete(crd, &DeleteParams::default()));
        }
    }
}

async fn external_client(path: &Path) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).expect("KTRIGGER_TEST_KUBECONFIG is readable");
    let config = Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.expect("a usable kubeconfig");
    Client::try_from(config).expect("a client for KTRIGGER_TEST_KUBECONFIG")
}

/// A suffix that makes names unique per test process and moment.
pub fn uuid_suffix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{:016x}", nanos ^ (u128::from(std::process::id()) << 40))
}

/// Deletes a namespace the test made besides its own, when dropped.
pub struct NamespaceGuard {
    client: Client,
    handle: tokio::runtime::Handle,
    name: String,
}

impl NamespaceGuard {
    /// Creates namespace `name` (through `env`'s client); it is deleted when the guard is dropped.
    pub fn create(env: &Env, name: &str) -> NamespaceGuard {
        let namespaces: Api<Namespace> = Api::all(env.client.clone());
        let body = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        env.runtime.block_on(namespaces.create(&PostParams::default(), &body)).expect("the namespace is created");
        NamespaceGuard { client: env.client.clone(), handle: env.runtime.handle().clone(), name: name.to_string() }
    }
}

impl Drop for NamespaceGuard {
    fn drop(&mut self) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let _ = self.handle.block_on(namespaces.delete(&self.name, &DeleteParams::default()));
    }
}
