//! A cluster for end-to-end tests: the in-process test cluster, or the cluster named by
//! `KTRIGGER_TEST_KUBECONFIG`, with a namespace of the test's own that is deleted afterwards.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Event as KubeEvent, Namespace};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use ktrigger_testcluster::TestCluster;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::{Client, Config};
use serde_json::{Value, json};

use super::{Running, repo, write_config};

/// The kubeconfig context of an authenticated user without permissions (../shared/realk8s).
pub const TENANT: &str = "tenant";

/// The ServiceAccount `ktrigger controller` runs as on a real cluster, in the test namespace.
pub const CONTROLLER_ACCOUNT: &str = "ktrigger-controller";

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
    /// The kubeconfig `ktrigger controller` runs with, made on first use.
    controller_identity: OnceLock<ControllerIdentity>,
    _dir: tempfile::TempDir,
}

/// Who the controller runs as: on a real cluster, a ServiceAccount bound to the RBAC the install
/// ships, so that what the shipped roles lack, and every refusal, comes from the real authorizer.
struct ControllerIdentity {
    kubeconfig: PathBuf,
    binding: Option<String>,
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
        Env {
            runtime,
            cluster,
            client,
            kubeconfig,
            namespace,
            crds: Vec::new(),
            controller_identity: OnceLock::new(),
            _dir: dir,
        }
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
        self.run_as(self.kubeconfig(), config, extra, watches)
    }

    /// Like [`run`](Self::run), with the identity of `kubeconfig`.
    pub fn run_as(
        &self,
        kubeconfig: &str,
        config: &str,
        extra: &[&str],
        watches: usize,
    ) -> (Running, tempfile::TempDir) {
        let (dir, path) = write_config(config);
        let mut args = vec!["-f", path.to_str().unwrap(), "--kubeconfig", kubeconfig];
        args.extend_from_slice(extra);
        let running = Running::start(&args);
        running
            .stderr
            .wait_until(&format!("{watches} synced watch(es)"), WAIT, |t| t.matches("watch synced").count() >= watches);
        (running, dir)
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

    /// The kubeconfig to run `ktrigger controller` with. On the test cluster (no RBAC), the
    /// test's own. On a real cluster: a token of the ServiceAccount `ktrigger-controller` of the
    /// test namespace, bound to the ClusterRole of config/rbac/role.yaml and to the leader
    /// election Role as installed, plus `edit` in the test namespace — what an operator grants
    /// the controller for TriggerServices there that name no ServiceAccount (they act as the
    /// controller, confined to their namespace). Everything else is refused by the real
    /// authorizer.
    pub fn controller_kubeconfig(&self) -> &str {
        let identity = self.controller_identity.get_or_init(|| self.make_controller_identity());
        identity.kubeconfig.to_str().unwrap()
    }

    /// On a real cluster whose kubeconfig has a `tenant` context: a kubeconfig acting as that
    /// user (authenticated, with no permissions but those a test grants). `None` on the test
    /// cluster, which has no RBAC.
    pub fn tenant_kubeconfig(&self) -> Option<PathBuf> {
        if !self.external() {
            return None;
        }
        let mut config: Value = serde_yaml::from_str(&std::fs::read_to_string(&self.kubeconfig).unwrap()).unwrap();
        let has_tenant = config["contexts"].as_array().is_some_and(|c| c.iter().any(|c| c["name"] == TENANT));
        if !has_tenant {
            eprintln!("note: the kubeconfig has no `{TENANT}` context; the test runs as its current one");
            return None;
        }
        config["current-context"] = json!(TENANT);
        let path = self._dir.path().join("tenant-kubeconfig");
        std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
        Some(path)
    }

    /// Grants the `tenant` user `rules` in the test namespace (a Role and its RoleBinding named
    /// `name`).
    pub fn grant_tenant(&self, name: &str, rules: Value) {
        let role = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": name, "namespace": self.namespace}, "rules": rules,
        });
        let binding = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": self.namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "User", "name": TENANT, "apiGroup": "rbac.authorization.k8s.io"}],
        });
        let apply = PatchParams::apply("ktrigger-e2e").force();
        self.runtime.block_on(async {
            let roles: Api<Role> = Api::namespaced(self.client.clone(), &self.namespace);
            roles.patch(name, &apply, &Patch::Apply(&role)).await.unwrap();
            let bindings: Api<RoleBinding> = Api::namespaced(self.client.clone(), &self.namespace);
            bindings.patch(name, &apply, &Patch::Apply(&binding)).await.unwrap();
        });
    }

    fn make_controller_identity(&self) -> ControllerIdentity {
        if !self.external() {
            return ControllerIdentity { kubeconfig: self.kubeconfig.clone(), binding: None };
        }
        let binding = format!("ktrigger-e2e-{}", self.namespace);
        let shipped = |file: &str| -> Value {
            let text = std::fs::read_to_string(repo().join("config/rbac").join(file)).unwrap();
            serde_yaml::from_str(&text).unwrap()
        };
        let role = shipped("role.yaml");
        let role_name = role["metadata"]["name"].as_str().unwrap().to_string();
        let mut election = shipped("leader_election_role.yaml");
        election["metadata"]["namespace"] = json!(self.namespace);
        let ns = &self.namespace;
        let subject = json!([{"kind": "ServiceAccount", "name": CONTROLLER_ACCOUNT, "namespace": ns}]);
        let role_ref =
            |kind: &str, name: &str| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name});
        let objects = [
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": CONTROLLER_ACCOUNT, "namespace": ns}}),
            role,
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                   "metadata": {"name": binding}, "roleRef": role_ref("ClusterRole", &role_name), "subjects": subject}),
            election.clone(),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": "ktrigger-leader-election", "namespace": ns},
                   "roleRef": role_ref("Role", election["metadata"]["name"].as_str().unwrap()), "subjects": subject}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": "ktrigger-controller-edit", "namespace": ns},
                   "roleRef": role_ref("ClusterRole", "edit"), "subjects": subject}),
        ];
        let yaml = objects.iter().map(|o| serde_yaml::to_string(o).unwrap()).collect::<Vec<_>>().join("---\n");
        let (_dir, path) = write_config(&yaml);
        let (ok, text) = self.kubectl(&["apply", "--server-side", "--force-conflicts", "-f", path.to_str().unwrap()]);
        assert!(ok, "the controller's ServiceAccount and RBAC: {text}");
        let (ok, token) = self.kubectl(&["create", "token", CONTROLLER_ACCOUNT, "-n", ns, "--duration", "2h"]);
        assert!(ok, "a token for the controller's ServiceAccount: {token}");
        let (ok, text) = self.kubectl(&["config", "view", "--raw", "--minify", "--flatten", "-o", "json"]);
        assert!(ok, "{text}");
        let current: Value = serde_json::from_str(&text).unwrap();
        let kubeconfig = json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "controller",
            "clusters": [{"name": "e2e", "cluster": current["clusters"][0]["cluster"]}],
            "users": [{"name": "controller", "user": {"token": token.trim()}}],
            "contexts": [{"name": "controller", "context": {"cluster": "e2e", "user": "controller", "namespace": ns}}],
        });
        let path = self._dir.path().join("controller-kubeconfig");
        std::fs::write(&path, serde_json::to_string(&kubeconfig).unwrap()).unwrap();
        ControllerIdentity { kubeconfig: path, binding: Some(binding) }
    }

    /// Starts `ktrigger controller` on this cluster as [`controller_kubeconfig`](Self::controller_kubeconfig),
    /// watching the test namespace and writing status every 300 ms, with extra arguments and
    /// environment variables.
    pub fn start_controller(&self, extra: &[&str], env: &[(String, String)]) -> Running {
        let args = ["--kubeconfig", self.controller_kubeconfig(), "--watch-namespaces", &self.namespace];
        Running::start_controller_with_env(&[&args[..], &["--status-interval", "300ms"], extra].concat(), env)
    }

    /// Runs the real kubectl on this cluster: whether it succeeded, and its stdout and stderr.
    pub fn kubectl(&self, args: &[&str]) -> (bool, String) {
        self.kubectl_as(self.kubeconfig(), args)
    }

    /// Runs the real kubectl with the identity of `kubeconfig`.
    pub fn kubectl_as(&self, kubeconfig: &str, args: &[&str]) -> (bool, String) {
        let output = Command::new("kubectl")
            .args(["--kubeconfig", kubeconfig])
            .args(args)
            .output()
            .expect("kubectl is installed (the tests use the real kubectl)");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.success(), text)
    }

    /// `kubectl apply` of YAML text in `namespace`; fails the test with kubectl's answer.
    pub fn apply(&self, namespace: &str, yaml: &str) {
        let (_dir, path) = write_config(yaml);
        let (ok, text) = self.kubectl(&["apply", "-n", namespace, "-f", path.to_str().unwrap()]);
        assert!(ok, "kubectl apply: {text}\n{yaml}");
    }

    /// Installs the TriggerService CRD of `config/crd` with kubectl and waits until it is served.
    pub fn install_trigger_service_crd(&self) {
        let crd = repo().join("config/crd/ktrigger.dev_triggerservices.yaml");
        let mut applied = self.kubectl(&["apply", "-f", crd.to_str().unwrap()]);
        // Tests running at once on a fresh server race to create it: the loser applies again.
        if !applied.0 && applied.1.contains("AlreadyExists") {
            applied = self.kubectl(&["apply", "-f", crd.to_str().unwrap()]);
        }
        let (ok, text) = applied;
        assert!(ok, "kubectl apply of the CRD: {text}");
        let established = ["wait", "--for", "condition=established", "crd/triggerservices.ktrigger.dev"];
        let (ok, text) = self.kubectl(&[&established[..], &["--timeout=30s"]].concat());
        assert!(ok, "CRD established: {text}");
    }

    /// The status entry of `trigger` of TriggerService `service` in the test namespace; null
    /// while there is none.
    pub fn trigger_status(&self, service: &str, trigger: &str) -> Value {
        let (ok, text) = self.kubectl(&["get", "triggerservice", service, "-n", &self.namespace, "-o", "json"]);
        if !ok {
            return Value::Null;
        }
        let object: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let triggers = object["status"]["triggers"].as_array().cloned().unwrap_or_default();
        triggers.into_iter().find(|t| t["name"] == trigger).unwrap_or(Value::Null)
    }

    /// Waits until the status entry of `trigger` passes `check`, and returns it.
    pub fn wait_trigger(&self, service: &str, trigger: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let status = self.trigger_status(service, trigger);
            if check(&status) {
                return status;
            }
            assert!(start.elapsed() < WAIT, "timed out waiting for {what}; status of {trigger}: {status:#}");
            std::thread::sleep(Duration::from_millis(200));
        }
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
        if let Some(binding) = self.controller_identity.get().and_then(|identity| identity.binding.as_ref()) {
            let bindings: Api<ClusterRoleBinding> = Api::all(self.client.clone());
            let _ = self.runtime.block_on(bindings.delete(binding, &DeleteParams::default()));
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
