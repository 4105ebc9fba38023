//! The controller against the test cluster: TriggerServices become running triggers, status
//! reports them, edits restart only what changed, deletes stop them.

use std::time::Duration;

use k8s_openapi::api::events::v1::Event as KubeEvent;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use ktrigger_api::TriggerService;
use ktrigger_controller::{ControllerOptions, Readiness, run};
use ktrigger_core::{Engine, Registry, ShutdownReport};
use ktrigger_sources::WebhookListener;
use ktrigger_testcluster::TestCluster;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, CustomResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn engine() -> Engine {
    let mut registry = Registry::default();
    ktrigger_sources::register(&mut registry, WebhookListener::detached());
    ktrigger_destinations::register(&mut registry);
    Engine::builder().registry(registry).build()
}

/// A test cluster with the TriggerService CRD installed, and a client of it.
async fn cluster_with_crd() -> (TestCluster, Client) {
    let cluster = TestCluster::start().await;
    let client = cluster.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &TriggerService::crd()).await.unwrap();
    (cluster, client)
}

/// Runs the controller on a task; cancel the token to stop it and await the handle for its report.
fn spawn_controller(
    client: &Client,
    options: ControllerOptions,
    readiness: Readiness,
) -> (CancellationToken, tokio::task::JoinHandle<ShutdownReport>) {
    let cancel = CancellationToken::new();
    (cancel.clone(), tokio::spawn(run(client.clone(), engine(), options, readiness, cancel)))
}

fn service(filter: &str) -> TriggerService {
    serde_json::from_value(json!({
        "apiVersion": "ktrigger.dev/v1alpha1",
        "kind": "TriggerService",
        "metadata": {"name": "svc", "namespace": "default"},
        "spec": {"triggers": [
            {"name": "tick", "source": {"type": "cron", "properties": {"schedule": "* * * * * *"}},
             "destinations": [{"type": "log", "properties": {"includeObject": false}}]},
            {"name": "second", "source": {"type": "cron", "properties": {"schedule": "* * * * * *"}},
             "filter": filter, "destinations": [{"type": "log", "properties": {"includeObject": false}}]}
        ]}
    }))
    .unwrap()
}

/// Polls the object's status until `check` holds; panics with the last status after 20 s.
async fn wait_status(
    api: &Api<TriggerService>,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..200 {
        if let Ok(object) = api.get("svc").await {
            last = serde_json::to_value(&object.status).unwrap();
            if check(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}; last status: {last:#}");
}

fn trigger<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["triggers"].as_array().unwrap().iter().find(|t| t["name"] == name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_services_are_reconciled_and_report_status() {
    let (_cluster, client) = cluster_with_crd().await;
    let options = ControllerOptions { status_interval: Duration::from_millis(200), ..Default::default() };
    let readiness = Readiness::default();
    let (cancel, controller) = spawn_controller(&client, options, readiness.clone());
    let api: Api<TriggerService> = Api::namespaced(client.clone(), "default");
    for _ in 0..100 {
        if readiness.is_ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(readiness.is_ready(), "ready once the TriggerService watch has listed");

    // One invalid trigger: Ready=False with the exact error, the other trigger still fires.
    api.create(&PostParams::default(), &service("object.schedule ==")).await.unwrap();
    let status = wait_status(&api, "an invalid trigger reported and the valid one firing", |s| {
        s["conditions"][0]["status"] == "False"
            && s["triggers"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["name"] == "tick" && t["fired"].as_u64() >= Some(1)))
    })
    .await;
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["conditions"][0]["reason"], "InvalidTriggers");
    let message = status["conditions"][0]["message"].as_str().unwrap();
    assert!(message.starts_with("trigger second: triggers[1].filter: line 1, column"), "{message}");
    assert_eq!(trigger(&status, "second")["ready"], false);
    assert_eq!(status["readyTriggers"], "1/2");
    let invalid = events_with_reason(&client, "InvalidTrigger").await;
    assert_eq!(invalid.len(), 1, "{invalid:?}");
    assert!(invalid[0].starts_with("trigger second: triggers[1].filter: line 1"), "{invalid:?}");

    // Fixing the broken trigger restarts only it: the other keeps its counters.
    let fired_before = trigger(&status, "tick")["fired"].as_u64().unwrap();
    let fixed = json!({"spec": {"triggers": serde_json::to_value(&service("true").spec.triggers).unwrap()}});
    api.patch("svc", &PatchParams::default(), &Patch::Merge(&fixed)).await.unwrap();
    let status = wait_status(&api, "Ready=True after the fix", |s| {
        s["conditions"][0]["status"] == "True" && s["observedGeneration"] == 2
    })
    .await;
    assert!(trigger(&status, "tick")["fired"].as_u64().unwrap() >= fired_before, "{status:#}");
    assert_eq!(status["readyTriggers"], "2/2");
    assert!(status["triggers"].as_array().unwrap().iter().all(|t| t["lastError"].is_null()), "{status:#}");

    // Deleting the object stops its triggers: nothing is left running at shutdown.
    api.delete("svc", &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cancel.cancel();
    let report = controller.await.unwrap();
    assert!(report.stats.is_empty(), "{:?}", report.stats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_written_only_when_it_changes() {
    let (cluster, client) = cluster_with_crd().await;
    let options = ControllerOptions { status_interval: Duration::from_millis(100), ..Default::default() };
    let (cancel, controller) = spawn_controller(&client, options, Readiness::default());
    let api: Api<TriggerService> = Api::namespaced(client.clone(), "default");
    let mut quiet = service("false");
    quiet.spec.triggers.truncate(1);
    quiet.spec.triggers[0].source.properties = json!({"schedule": "0 0 1 1 *"});
    api.create(&PostParams::default(), &quiet).await.unwrap();
    wait_status(&api, "Ready=True", |s| s["conditions"][0]["status"] == "True").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let writes =
        || cluster.request_log().iter().filter(|(method, path)| method == "PATCH" && path.contains("/status")).count();
    let before = writes();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(writes(), before, "an idle TriggerService's status is not rewritten on every tick");
    cancel.cancel();
    controller.await.unwrap();
}

/// The notes of the Kubernetes Events with `reason` in namespace `default`.
async fn events_with_reason(client: &Client, reason: &str) -> Vec<String> {
    let events: Api<KubeEvent> = Api::namespaced(client.clone(), "default");
    let list = events.list(&Default::default()).await.unwrap();
    list.items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason) && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("svc")
        })
        .map(|e| e.note.unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_become_kubernetes_events_without_flooding() {
    let (_cluster, client) = cluster_with_crd().await;
    let options = ControllerOptions { status_interval: Duration::from_millis(100), ..Default::default() };
    let (cancel, controller) = spawn_controller(&client, options, Readiness::default());
    let api: Api<TriggerService> = Api::namespaced(client.clone(), "default");
    let doomed: TriggerService = serde_json::from_value(json!({
        "apiVersion": "ktrigger.dev/v1alpha1",
        "kind": "TriggerService",
        "metadata": {"name": "svc", "namespace": "default"},
        "spec": {"triggers": [
            {"name": "doomed", "source": {"type": "cron", "properties": {"schedule": "* * * * * *"}},
             "destinations": [{"type": "webhook", "properties": {"url": "http://127.0.0.1:9/closed"},
                               "retry": {"maxAttempts": 1}}]}
        ]}
    }))
    .unwrap();
    api.create(&PostParams::default(), &doomed).await.unwrap();
    let status = wait_status(&api, "three dead letters", |s| {
        s["triggers"].as_array().is_some_and(|t| t.iter().any(|t| t["deadLettered"].as_u64() >= Some(3)))
    })
    .await;
    assert_eq!(trigger(&status, "doomed")["failed"], trigger(&status, "doomed")["deadLettered"]);
    let notes = events_with_reason(&client, "DeliveryDeadLettered").await;
    assert_eq!(notes.len(), 1, "one Event per minute and trigger, however many dead letters: {notes:?}");
    assert!(notes[0].starts_with("trigger doomed: "), "{notes:?}");
    assert!(notes[0].contains("dead-lettered; last error: webhook#0:"), "{notes:?}");
    cancel.cancel();
    controller.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_watched_namespace_keeps_its_trigger_services() {
    let (_cluster, client) = cluster_with_crd().await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let other = serde_json::from_value(json!({"metadata": {"name": "other"}})).unwrap();
    namespaces.create(&PostParams::default(), &other).await.unwrap();
    let mut apis = Vec::new();
    for namespace in ["default", "other"] {
        let api: Api<TriggerService> = Api::namespaced(client.clone(), namespace);
        let mut object = service("true");
        object.metadata.namespace = Some(namespace.into());
        object.spec.triggers.truncate(1);
        api.create(&PostParams::default(), &object).await.unwrap();
        apis.push(api);
    }
    // Both objects exist before the controller lists them: one namespace's list must not drop the other's.
    let options = ControllerOptions {
        namespaces: vec!["default".into(), "other".into()],
        status_interval: Duration::from_millis(200),
        ..Default::default()
    };
    let (cancel, controller) = spawn_controller(&client, options, Readiness::default());
    for api in &apis {
        wait_status(api, "both namespaces firing", |s| {
            s["conditions"][0]["status"] == "True" && s["fired"].as_u64() >= Some(2)
        })
        .await;
    }
    cancel.cancel();
    let report = controller.await.unwrap();
    assert_eq!(report.stats.len(), 2, "{:?}", report.stats);
}
