//! The Kubernetes destinations (`patch-resource`, `bump-application-revision`, `create-event`,
//! `job`) against an API server: the in-process test cluster, or a real cluster when
//! `KTRIGGER_TEST_KUBECONFIG` names a kubeconfig. Each test works in a namespace of its own,
//! deleted at the end; tests that inject faults only run against the test cluster.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Event as KubeEvent, Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use ktrigger_core::{BuildContext, DeliveryError, DeliveryRequest, Destination, Receipt, Registry};
use ktrigger_core::{Event, TriggerId};
use ktrigger_core::{SecretKeyRef, SecretReader};
use ktrigger_kube::actions::NEEDS_CLUSTER;
use ktrigger_kube::actions::bump_app::PUBLISH_VERSION;
use ktrigger_kube::{Cluster, HubOptions, IdentityPolicy, KubeSecretReader};
use ktrigger_testcluster::{Faults, TestCluster};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::core::GroupVersionKind;
use kube::{Client, discovery};
use serde_json::{Value, json};

const KUBECONFIG_VAR: &str = "KTRIGGER_TEST_KUBECONFIG";

/// Where a test runs: a fresh namespace in the test cluster or in the cluster of
/// `KTRIGGER_TEST_KUBECONFIG`; the namespace is deleted when this is dropped.
struct Env {
    cluster: Option<TestCluster>,
    config: kube::Config,
    client: Client,
    namespace: String,
    registry: Registry,
}

async fn config_from(kubeconfig: kube::config::Kubeconfig) -> kube::Config {
    kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
        .await
        .expect("the kubeconfig is usable")
}

impl Env {
    async fn start() -> Env {
        ktrigger_kube::ensure_crypto_provider();
        let (cluster, config) = match std::env::var(KUBECONFIG_VAR) {
            Ok(path) => {
                let kubeconfig =
                    kube::config::Kubeconfig::read_from(path).expect("KTRIGGER_TEST_KUBECONFIG is readable");
                (None, config_from(kubeconfig).await)
            }
            Err(_) => {
                let cluster = TestCluster::start().await;
                let kubeconfig = kube::config::Kubeconfig::from_yaml(&cluster.kubeconfig_yaml()).unwrap();
                (Some(cluster), config_from(kubeconfig).await)
            }
        };
        let client = Client::try_from(config.clone()).expect("a client for the cluster");
        let namespace = format!("kt-dest-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let object = serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap();
        namespaces.create(&PostParams::default(), &object).await.expect("create the test namespace");
        let mut registry = Registry::default();
        ktrigger_kube::register(&mut registry, local_cluster(client.clone()));
        Env { cluster, config, client, namespace, registry }
    }

    /// The test cluster's fault injector; `None` against a real cluster.
    fn faults(&self) -> Option<&Faults> {
        self.cluster.as_ref().map(TestCluster::faults)
    }

    /// A client acting as the kubeconfig's `tenant` user (authenticated, without permissions),
    /// when a real cluster's kubeconfig has that context (../shared/realk8s makes one).
    async fn tenant_client(&self) -> Option<Client> {
        let path = std::env::var(KUBECONFIG_VAR).ok()?;
        let kubeconfig = kube::config::Kubeconfig::read_from(path).expect("KTRIGGER_TEST_KUBECONFIG is readable");
        if !kubeconfig.contexts.iter().any(|c| c.name == "tenant") {
            return None;
        }
        let options = kube::config::KubeConfigOptions { context: Some("tenant".into()), ..Default::default() };
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options).await.expect("the tenant context");
        Some(Client::try_from(config).expect("a client for the tenant context"))
    }
}

/// Says why a test that needs the test cluster's fault injection stops on a real cluster.
fn skipped_without_faults() {
    eprintln!("skipped: fault injection needs the test cluster (KTRIGGER_TEST_KUBECONFIG is set)");
}

impl Env {
    fn trigger(&self) -> TriggerId {
        TriggerId { namespace: self.namespace.clone(), service: "svc".into(), trigger: "on-change".into() }
    }

    fn destination(&self, kind: &str, properties: Value) -> Arc<dyn Destination> {
        let context = BuildContext::new(self.trigger());
        self.registry.destination(kind).unwrap().build(&properties, &context).unwrap()
    }

    async fn deliver(
        &self,
        destination: &Arc<dyn Destination>,
        id: &str,
        object: Value,
    ) -> Result<Receipt, DeliveryError> {
        let trigger = self.trigger();
        let event = Event::new("resource-watcher", "update", object);
        destination.deliver(&DeliveryRequest { id, trigger: &trigger, event: &event, attempt: 1 }).await
    }

    fn configmaps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Creates a ConfigMap and returns it as a source object (with apiVersion, kind and uid).
    async fn configmap(&self, name: &str, labels: Value, data: Value) -> Value {
        let object =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "data": data})).unwrap();
        let created = self.configmaps().create(&PostParams::default(), &object).await.unwrap();
        serde_json::to_value(created).unwrap()
    }

    async fn data(&self, name: &str) -> Value {
        json!(self.configmaps().get(name).await.unwrap().data)
    }

    fn applications(&self) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("core.oam.dev", "v1beta1", "Application");
        Api::namespaced_with(
            self.client.clone(),
            &self.namespace,
            &ApiResource::from_gvk_with_plural(&gvk, "applications"),
        )
    }

    /// Registers KubeVela's Application kind (kept when a real cluster already has it).
    async fn install_applications(&self) {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let crd = serde_json::from_value(json!({
            "metadata": {"name": "applications.core.oam.dev"},
            "spec": {
                "group": "core.oam.dev",
                "scope": "Namespaced",
                "names": {"plural": "applications", "singular": "application", "kind": "Application", "shortNames": ["app"]},
                "versions": [{"name": "v1beta1", "served": true, "storage": true,
                              "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}],
            }
        }))
        .unwrap();
        if let Err(error) = crds.create(&PostParams::default(), &crd).await {
            assert!(matches!(&error, kube::Error::Api(s) if s.code == 409), "create the Application CRD: {error}");
        }
        let gvk = GroupVersionKind::gvk("core.oam.dev", "v1beta1", "Application");
        for _ in 0..300 {
            if discovery::pinned_kind(&self.client, &gvk).await.is_ok()
                && self.applications().list(&ListParams::default()).await.is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the Application kind was not served within 30s");
    }

    async fn application(&self, name: &str, labels: Value, publish_version: Option<&str>) {
        let mut annotations = json!({});
        if let Some(version) = publish_version {
            annotations[PUBLISH_VERSION] = json!(version);
        }
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "core.oam.dev/v1beta1",
            "kind": "Application",
            "metadata": {"name": name, "labels": labels, "annotations": annotations},
            "spec": {"components": []},
        }))
        .unwrap();
        self.applications().create(&PostParams::default(), &object).await.unwrap();
    }

    async fn publish_version(&self, name: &str) -> Option<String> {
        let application = self.applications().get(name).await.unwrap();
        application.metadata.annotations.unwrap_or_default().get(PUBLISH_VERSION).cloned()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Only a real cluster keeps anything: delete the namespace from a runtime of our own,
        // since the test's runtime may be gone (or panicking) by now.
        if self.cluster.is_some() {
            return;
        }
        let (namespace, config) = (self.namespace.clone(), self.config.clone());
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let Ok(client) = Client::try_from(config) else { return };
                let namespaces: Api<Namespace> = Api::all(client);
                let _ = namespaces.delete(&namespace, &DeleteParams::default()).await;
            });
        });
        let _ = cleanup.join();
    }
}

fn permanent(result: Result<Receipt, DeliveryError>) -> String {
    match result {
        Err(DeliveryError::Permanent { reason }) => reason,
        other => panic!("expected a permanent failure, got {other:?}"),
    }
}

fn detail(receipt: Receipt) -> String {
    receipt.detail.unwrap_or_default()
}

#[tokio::test]
async fn merge_patch_renders_templates_into_the_source_object() {
    let env = Env::start().await;
    let source = env.configmap("web", json!({}), json!({"a": "1"})).await;
    let destination = env.destination(
        "patch-resource",
        json!({"patch": {"data": {"seen": "{{ event.type }} of {{ object.metadata.name }}", "a": null}}}),
    );

    let receipt = detail(env.deliver(&destination, "d-1", source).await.unwrap());

    assert!(receipt.starts_with(&format!("patched ConfigMap {}/web (resourceVersion ", env.namespace)), "{receipt}");
    assert_eq!(env.data("web").await, json!({"seen": "update of web"}));
}

#[tokio::test]
async fn destinations_resolve_kinds_into_the_cache_of_the_cluster_they_share_with_sources() {
    let env = Env::start().await;
    let source = env.configmap("web", json!({}), json!({})).await;
    let cluster = local_cluster(env.client.clone());
    let mut registry = Registry::default();
    ktrigger_kube::register(&mut registry, cluster.clone());
    let context = BuildContext::new(env.trigger());
    let properties = json!({"patch": {"data": {"seen": "yes"}}});
    let destination = registry.destination("patch-resource").unwrap().build(&properties, &context).unwrap();
    let configmaps = GroupVersionKind::gvk("", "v1", "ConfigMap");
    assert_eq!(cluster.cached_kind(&configmaps), None);

    env.deliver(&destination, "d-1", source).await.unwrap();

    let resolved = cluster.cached_kind(&configmaps).expect("the delivery resolved ConfigMap on the cluster");
    assert_eq!(
        (resolved.resource.plural.as_str(), resolved.namespaced, resolved.watchable),
        ("configmaps", true, true)
    );
}

#[tokio::test]
async fn json_patch_and_server_side_apply_reach_named_targets() {
    let env = Env::start().await;
    let source = env.configmap("web", json!({}), json!({"replicas": "3"})).await;
    env.configmap("web-settings", json!({}), json!({"keep": "yes"})).await;
    let json_patch = env.destination(
        "patch-resource",
        json!({
            "apiVersion": "v1", "kind": "ConfigMap", "name": "{{ object.metadata.name }}-settings", "type": "json",
            "patch": [{"op": "add", "path": "/data/replicas", "value": "{{ object.data.replicas }}"}],
        }),
    );
    let apply = env.destination(
        "patch-resource",
        json!({
            "apiVersion": "v1", "kind": "ConfigMap", "name": "{{ object.metadata.name }}-applied", "type": "apply",
            "patch": "data:\n  from: \"{{ object.metadata.name }}\"\n  event: {{ event.type }}\n",
        }),
    );

    env.deliver(&json_patch, "d-1", source.clone()).await.unwrap();
    let applied = detail(env.deliver(&apply, "d-2", source).await.unwrap());

    assert_eq!(env.data("web-settings").await, json!({"keep": "yes", "replicas": "3"}));
    assert!(applied.starts_with(&format!("patched ConfigMap {}/web-applied", env.namespace)), "{applied}");
    assert_eq!(env.data("web-applied").await, json!({"from": "web", "event": "update"}));
}

#[tokio::test]
async fn a_missing_target_is_a_permanent_failure() {
    let env = Env::start().await;
    let destination = env.destination(
        "patch-resource",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "absent", "patch": {"data": {"a": "b"}}}),
    );
    let reason = permanent(env.deliver(&destination, "d-1", json!({})).await);
    assert!(reason.starts_with(&format!("patch ConfigMap {}/absent: target not found", env.namespace)), "{reason}");

    let unknown =
        env.destination("patch-resource", json!({"apiVersion": "v1", "kind": "Gadget", "name": "x", "patch": {}}));
    let reason = permanent(env.deliver(&unknown, "d-2", json!({})).await);
    assert_eq!(reason, "the cluster serves no kind Gadget in v1");
}

#[tokio::test]
async fn a_forbidden_patch_fails_permanently_with_the_api_server_message() {
    let env = Env::start().await;
    let source = env.configmap("web", json!({}), json!({})).await;
    let properties = json!({"patch": {"data": {"a": "b"}}});
    // The test cluster is told to refuse; a real one refuses the `tenant` user, who has no Role.
    let destination = match (env.faults(), env.tenant_client().await) {
        (Some(faults), _) => {
            faults.forbid("patch", "configmaps");
            env.destination("patch-resource", properties)
        }
        (None, Some(tenant)) => {
            let mut registry = Registry::default();
            ktrigger_kube::register(&mut registry, local_cluster(tenant));
            let context = BuildContext::new(env.trigger());
            registry.destination("patch-resource").unwrap().build(&properties, &context).unwrap()
        }
        (None, None) => {
            eprintln!("skipped: no `tenant` context in KTRIGGER_TEST_KUBECONFIG to be refused as");
            return;
        }
    };

    let reason = permanent(env.deliver(&destination, "d-1", source).await);

    assert!(reason.starts_with(&format!("patch ConfigMap {}/web: forbidden: ", env.namespace)), "{reason}");
    assert!(reason.contains("cannot patch resource \"configmaps\""), "{reason}");
}

#[tokio::test]
async fn conflicts_and_server_errors_are_transient() {
    let env = Env::start().await;
    let Some(faults) = env.faults() else { return skipped_without_faults() };
    let source = env.configmap("web", json!({}), json!({})).await;
    let destination = env.destination("patch-resource", json!({"patch": {"data": {"a": "b"}}}));

    faults.conflict_on_next_write("configmaps");
    let conflict = env.deliver(&destination, "d-1", source.clone()).await;
    faults.fail_next(1, "configmaps");
    let server_error = env.deliver(&destination, "d-1", source.clone()).await;
    let retried = env.deliver(&destination, "d-1", source).await;

    assert!(
        matches!(&conflict, Err(DeliveryError::Transient { reason, .. }) if reason.contains("conflict")),
        "{conflict:?}"
    );
    assert!(
        matches!(&server_error, Err(DeliveryError::Transient { reason, .. }) if reason.contains("500")),
        "{server_error:?}"
    );
    assert!(retried.is_ok(), "{retried:?}");
    assert_eq!(env.data("web").await, json!({"a": "b"}));
}

#[tokio::test]
async fn dry_run_renders_the_request_without_calling_the_cluster() {
    let env = Env::start().await;
    let Some(cluster) = &env.cluster else {
        return eprintln!("skipped: it counts requests in the test cluster's request log");
    };
    let destination =
        env.destination("patch-resource", json!({"type": "merge", "patch": {"data": {"n": "{{ event.type }}"}}}));
    let trigger = env.trigger();
    let event = Event::new(
        "resource-watcher",
        "update",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web", "namespace": env.namespace}}),
    );
    let before = cluster.request_log().len();

    let rendered =
        destination.render(&DeliveryRequest { id: "d-1", trigger: &trigger, event: &event, attempt: 1 }).unwrap();

    assert_eq!(cluster.request_log().len(), before);
    assert_eq!(rendered["method"], "PATCH");
    assert_eq!(rendered["path"], format!("/api/v1/namespaces/{}/configmaps/web?fieldManager=ktrigger", env.namespace));
    assert_eq!(rendered["body"], json!({"data": {"n": "update"}}));
}

#[tokio::test]
async fn bump_by_label_of_the_source_object_increments_publish_version() {
    let env = Env::start().await;
    env.install_applications().await;
    env.application("app-1", json!({}), Some("1")).await;
    env.application("app-2", json!({}), None).await;
    let destination =
        env.destination("bump-application-revision", json!({"nameSelector": {"fromLabel": "watch-this"}}));
    let first = env.configmap("cm-1", json!({"watch-this": "app-1"}), json!({})).await;
    let second = env.configmap("cm-2", json!({"watch-this": "app-2"}), json!({})).await;
    if let Some(faults) = env.faults() {
        // A write that loses a race is read again and retried, not bumped twice.
        faults.conflict_on_next_write("applications");
    }

    let receipt = detail(env.deliver(&destination, "d-1", first.clone()).await.unwrap());
    let again = detail(env.deliver(&destination, "d-1", first).await.unwrap());
    env.deliver(&destination, "d-2", second).await.unwrap();

    assert_eq!(receipt, format!("bumped Application {}/app-1 (publishVersion 2)", env.namespace));
    assert_eq!(again, receipt, "a retried delivery does not bump again");
    assert_eq!(env.publish_version("app-1").await.as_deref(), Some("2"));
    assert_eq!(env.publish_version("app-2").await.as_deref(), Some("1"));
}

#[tokio::test]
async fn bump_by_matching_labels_bumps_every_selected_application() {
    let env = Env::start().await;
    env.install_applications().await;
    env.application("a", json!({"team": "blue"}), Some("7")).await;
    env.application("b", json!({"team": "blue"}), None).await;
    env.application("c", json!({"team": "red"}), Some("1")).await;
    let destination = env.destination(
        "bump-application-revision",
        json!({"namespace": env.namespace, "matchingLabels": {"team": "{{ object.metadata.labels.team }}"}}),
    );
    let source = env.configmap("cm", json!({"team": "blue"}), json!({})).await;

    let receipt = detail(env.deliver(&destination, "d-1", source).await.unwrap());

    let ns = &env.namespace;
    assert_eq!(receipt, format!("bumped Applications {ns}/a (publishVersion 8), {ns}/b (publishVersion 1)"));
    assert_eq!(env.publish_version("c").await.as_deref(), Some("1"));
}

#[tokio::test]
async fn a_publish_version_that_is_not_an_integer_is_a_permanent_failure() {
    let env = Env::start().await;
    env.install_applications().await;
    env.application("web", json!({}), Some("v1.2")).await;
    let destination = env.destination("bump-application-revision", json!({}));
    let source = env.configmap("web", json!({}), json!({})).await;

    let reason = permanent(env.deliver(&destination, "d-1", source).await);

    assert_eq!(
        reason,
        format!(
            "Application {}/web: annotation app.oam.dev/publishVersion is \"v1.2\", not an integer, so it cannot be bumped",
            env.namespace
        )
    );
    assert_eq!(env.publish_version("web").await.as_deref(), Some("v1.2"));
}

#[tokio::test]
async fn create_event_records_one_event_on_the_source_object() {
    let env = Env::start().await;
    let source = env.configmap("web", json!({}), json!({})).await;
    let uid = source["metadata"]["uid"].clone();
    let destination = env.destination(
        "create-event",
        json!({"reason": "ConfigChanged", "type": "Warning", "message": "{{ object.metadata.name }} had an {{ event.type }}"}),
    );

    let receipt = detail(env.deliver(&destination, "d-1", source.clone()).await.unwrap());
    let retried = detail(env.deliver(&destination, "d-1", source).await.unwrap());

    let events: Api<KubeEvent> = Api::namespaced(env.client.clone(), &env.namespace);
    let list = events.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(list.len(), 1, "{list:?}");
    let event = &list[0];
    let name = event.metadata.name.clone().unwrap();
    assert!(name.starts_with("web.") && name.len() == "web.".len() + 16, "{name}");
    assert_eq!(receipt, format!("created Event {}/{name}", env.namespace));
    assert!(retried.contains("already created"), "{retried}");
    assert_eq!(event.involved_object.uid.as_deref(), uid.as_str());
    assert_eq!(event.involved_object.kind.as_deref(), Some("ConfigMap"));
    assert_eq!(event.involved_object.namespace.as_deref(), Some(env.namespace.as_str()));
    assert_eq!(event.reason.as_deref(), Some("ConfigChanged"));
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.message.as_deref(), Some("web had an update"));
    assert_eq!(event.reporting_component.as_deref(), Some("ktrigger"));
    assert_eq!(event.count, Some(1));
}

#[tokio::test]
async fn create_event_on_a_named_object_defaults_to_the_trigger_namespace() {
    let env = Env::start().await;
    env.configmap("settings", json!({}), json!({})).await;
    let destination = env.destination(
        "create-event",
        json!({"involvedObject": {"apiVersion": "v1", "kind": "ConfigMap", "name": "settings"}, "reason": "Noticed"}),
    );

    env.deliver(&destination, "d-1", json!({"schedule": "* * * * *"})).await.unwrap();

    let events: Api<KubeEvent> = Api::namespaced(env.client.clone(), &env.namespace);
    let list = events.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].involved_object.name.as_deref(), Some("settings"));
    assert_eq!(list[0].involved_object.namespace.as_deref(), Some(env.namespace.as_str()));
    assert_eq!(list[0].message.as_deref(), Some(format!("trigger {} fired on a update event", env.trigger()).as_str()));
}

#[tokio::test]
async fn job_is_owned_by_the_source_object_and_created_once_per_delivery() {
    let env = Env::start().await;
    let source = env.configmap("web", json!({}), json!({})).await;
    let destination = env.destination(
        "task",
        json!({"image": "busybox:1.36", "command": ["sh", "-c", "echo {{ object.metadata.name }}"], "backoffLimit": 0}),
    );

    let created = detail(env.deliver(&destination, "d-1", source.clone()).await.unwrap());
    let retried = detail(env.deliver(&destination, "d-1", source.clone()).await.unwrap());
    env.deliver(&destination, "d-2", source.clone()).await.unwrap();

    let jobs: Api<Job> = Api::namespaced(env.client.clone(), &env.namespace);
    let list = jobs.list(&ListParams::default().labels("app.kubernetes.io/managed-by=ktrigger")).await.unwrap().items;
    assert_eq!(list.len(), 2, "one Job per delivery, not per attempt");
    let job = list.iter().find(|j| created.ends_with(j.metadata.name.as_deref().unwrap())).expect("the first Job");
    assert!(created.starts_with(&format!("created Job {}/on-change-", env.namespace)), "{created}");
    assert!(retried.contains("already created"), "{retried}");
    let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("ConfigMap", "web"));
    assert_eq!(json!(owner.uid), source["metadata"]["uid"]);
    let spec = job.spec.as_ref().unwrap();
    assert_eq!(spec.ttl_seconds_after_finished, Some(3600));
    assert_eq!(spec.backoff_limit, Some(0));
    let container = &spec.template.spec.as_ref().unwrap().containers[0];
    assert_eq!(container.command.as_deref().unwrap(), ["sh", "-c", "echo web"]);
}

#[tokio::test]
async fn without_a_cluster_deliveries_fail_permanently() {
    let mut registry = Registry::default();
    ktrigger_kube::register(&mut registry, Cluster::offline());
    let trigger = TriggerId { namespace: "apps".into(), service: "svc".into(), trigger: "t".into() };
    let context = BuildContext::new(trigger.clone());
    let destination = registry
        .destination("patch-resource")
        .unwrap()
        .build(&json!({"patch": {"data": {"a": "b"}}}), &context)
        .unwrap();
    let event = Event::new("cron", "fire", json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}));

    let result = destination.deliver(&DeliveryRequest { id: "d", trigger: &trigger, event: &event, attempt: 1 }).await;

    assert_eq!(result.unwrap_err(), DeliveryError::permanent(NEEDS_CLUSTER));
}

/// The cluster as `ktrigger run` reaches it through `client`: its own identity, anywhere.
fn local_cluster(client: Client) -> Cluster {
    Cluster::with_client(client, IdentityPolicy::local(), HubOptions::default(), Vec::new())
}

/// The cluster of `ktrigger controller` without a default ServiceAccount.
fn controller_cluster(env: &Env) -> Cluster {
    let identities = IdentityPolicy::controller(None, false).expect("no default to check");
    Cluster::with_client(env.client.clone(), identities, HubOptions::default(), Vec::new())
}

/// Creates Secret `name` with `data` (string values) in the test namespace.
async fn secret(env: &Env, name: &str, data: Value) {
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.namespace);
    let object = serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data})).unwrap();
    secrets.create(&PostParams::default(), &object).await.expect("create the Secret");
}

#[tokio::test]
async fn secret_key_refs_are_read_in_the_trigger_service_namespace() {
    let env = Env::start().await;
    secret(&env, "chat", json!({"url": "https://hooks.example.test/T0/B0/s3cr3t", "binary": "ok"})).await;
    let reader = KubeSecretReader::new(controller_cluster(&env));
    let reference = |name: &str, key: &str| SecretKeyRef { name: name.into(), key: key.into() };

    let value = reader.read(&env.namespace, None, &reference("chat", "url")).await.unwrap();
    assert_eq!(value.expose(), "https://hooks.example.test/T0/B0/s3cr3t");

    let missing_key = reader.read(&env.namespace, None, &reference("chat", "token")).await.unwrap_err();
    assert_eq!(missing_key, format!("Secret {}/chat has no key \"token\"", env.namespace));
    let missing = reader.read(&env.namespace, None, &reference("nope", "url")).await.unwrap_err();
    assert_eq!(missing, format!("Secret {}/nope not found", env.namespace));
    assert!(!missing_key.contains("s3cr3t") && !missing.contains("s3cr3t"));
}

#[tokio::test]
async fn a_service_account_reads_secrets_as_itself_and_a_refusal_is_reported() {
    let env = Env::start().await;
    secret(&env, "chat", json!({"url": "https://hooks.example.test/T0/B0/s3cr3t"})).await;
    let reader = KubeSecretReader::new(controller_cluster(&env));
    let reference = SecretKeyRef { name: "chat".into(), key: "url".into() };
    // A real cluster refuses because the ServiceAccount has no Role; the test cluster is told to.
    if let Some(faults) = env.faults() {
        faults.forbid("get", "secrets");
    }

    let refused = reader.read(&env.namespace, Some("notifier"), &reference).await.unwrap_err();

    let prefix = format!("reading Secret {ns}/chat as ServiceAccount {ns}/notifier was refused: ", ns = env.namespace);
    assert!(refused.starts_with(&prefix), "{refused}");
    assert!(!refused.contains("s3cr3t"), "{refused}");
    if let Some(cluster) = &env.cluster {
        let user = format!("system:serviceaccount:{}:notifier", env.namespace);
        let asked = cluster.requests().iter().any(|r| {
            r.method == "GET" && r.uri.contains("/secrets/chat") && r.impersonate_user.as_deref() == Some(user.as_str())
        });
        assert!(asked, "the Secret was read as {user}");
    }
}

#[tokio::test]
async fn secrets_of_trigger_services_without_a_service_account_are_read_as_the_default_one() {
    let env = Env::start().await;
    secret(&env, "chat", json!({"url": "https://hooks.example.test/T0/B0/s3cr3t"})).await;
    let identities = IdentityPolicy::controller(Some("ktrigger-default".into()), false).unwrap();
    let reader =
        KubeSecretReader::new(Cluster::with_client(env.client.clone(), identities, HubOptions::default(), Vec::new()));
    let reference = SecretKeyRef { name: "chat".into(), key: "url".into() };
    // The default ServiceAccount has no Role on a real cluster; the test cluster is told to refuse.
    if let Some(faults) = env.faults() {
        faults.forbid("get", "secrets");
    }

    let refused = reader.read(&env.namespace, None, &reference).await.unwrap_err();

    let prefix =
        format!("reading Secret {ns}/chat as ServiceAccount {ns}/ktrigger-default was refused: ", ns = env.namespace);
    assert!(refused.starts_with(&prefix), "{refused}");
    if let Some(cluster) = &env.cluster {
        let user = format!("system:serviceaccount:{}:ktrigger-default", env.namespace);
        let asked = cluster
            .requests()
            .iter()
            .any(|r| r.uri.contains("/secrets/chat") && r.impersonate_user == Some(user.clone()));
        assert!(asked, "the Secret was read as {user}");
    }
}
