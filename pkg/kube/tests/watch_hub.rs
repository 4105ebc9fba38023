//! The Kubernetes sources against the project's test cluster: what each trigger receives, how
//! many watches are opened, and what happens when watches break.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Event as KubeEvent, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use ktrigger_core::{
    BuildContext, Envelope, EventSink, Handled, Registry, SharedEvent, Source, SourceError, SourceNeeds, TriggerId,
};
use ktrigger_kube::{Cluster, HubOptions, IdentityPolicy, register};
use ktrigger_testcluster::TestCluster;
use kube::Client;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

struct Harness {
    cluster: TestCluster,
    client: Client,
    kube: Cluster,
    registry: Registry,
}

async fn harness(options: HubOptions) -> Harness {
    harness_with(options, IdentityPolicy::local()).await
}

async fn harness_with(options: HubOptions, identities: IdentityPolicy) -> Harness {
    ktrigger_kube::ensure_crypto_provider();
    let cluster = TestCluster::start().await;
    let client = cluster.client().await;
    let kube = Cluster::with_client(client.clone(), identities, options, Vec::new());
    let mut registry = Registry::default();
    register(&mut registry, kube.clone());
    Harness { cluster, client, kube, registry }
}

/// One running source and what it sent.
struct Running {
    events: mpsc::Receiver<Envelope>,
    cancel: CancellationToken,
    task: Option<JoinHandle<Result<(), SourceError>>>,
    source: Arc<dyn Source>,
    sink: EventSink,
}

impl Harness {
    fn start(&self, source_type: &str, properties: Value, old_object: bool) -> Running {
        let source = self.build(source_type, properties, None, SourceNeeds { old_object }).unwrap();
        self.run(source)
    }

    /// Builds a source of a TriggerService in namespace `test` naming `service_account`.
    fn build(
        &self,
        source_type: &str,
        properties: Value,
        service_account: Option<&str>,
        needs: SourceNeeds,
    ) -> Result<Arc<dyn Source>, String> {
        let context = BuildContext {
            service_account: service_account.map(String::from),
            needs,
            ..BuildContext::new(TriggerId {
                namespace: "test".into(),
                service: "svc".into(),
                trigger: source_type.into(),
            })
        };
        self.registry.source(source_type).unwrap().build(&properties, &context).map_err(|e| e.to_string())
    }

    fn run(&self, source: Arc<dyn Source>) -> Running {
        let (sink, events) = EventSink::channel(1024);
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let (source, sink, cancel) = (source.clone(), sink.clone(), cancel.clone());
            async move { source.run(sink, cancel).await }
        });
        Running { events, cancel, task: Some(task), source, sink }
    }

    fn configmaps(&self, namespace: &str) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), namespace)
    }

    async fn create_configmap(&self, namespace: &str, name: &str, labels: Value) {
        let cm = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "data": {"v": "1"}}));
        self.configmaps(namespace).create(&PostParams::default(), &cm.unwrap()).await.unwrap();
    }

    async fn set_data(&self, namespace: &str, name: &str, value: &str) {
        let patch = Patch::Merge(json!({"data": {"v": value}}));
        self.configmaps(namespace).patch(name, &PatchParams::default(), &patch).await.unwrap();
    }

    async fn delete_configmap(&self, namespace: &str, name: &str) {
        self.configmaps(namespace).delete(name, &DeleteParams::default()).await.unwrap();
    }

    async fn wait_for_watches(&self, plural: &str, n: usize) {
        assert!(self.cluster.wait_for_watches(plural, n, WAIT).await, "{n} watch(es) of {plural} in time");
    }
}

impl Running {
    /// The next event, answered as a trigger that fired it would.
    async fn next(&mut self) -> SharedEvent {
        let envelope =
            tokio::time::timeout(WAIT, self.events.recv()).await.expect("an event in time").expect("the source runs");
        let event = envelope.event.clone();
        envelope.answer(Handled::Fired);
        event
    }

    /// `(event type, object name)` of the next event.
    async fn next_pair(&mut self) -> (String, String) {
        let event = self.next().await;
        (event.meta.event_type.clone(), name_of(&event.object))
    }

    /// Every event until none arrived for `quiet`.
    async fn drain(&mut self, quiet: Duration) -> Vec<(String, String)> {
        let mut seen = Vec::new();
        while let Ok(Some(envelope)) = tokio::time::timeout(quiet, self.events.recv()).await {
            seen.push((envelope.event.meta.event_type.clone(), name_of(&envelope.event.object)));
            envelope.answer(Handled::Fired);
        }
        seen
    }

    /// The result of the current run, which must end within `WAIT`.
    async fn failure(&mut self) -> String {
        let task = self.task.take().unwrap();
        match tokio::time::timeout(WAIT, task).await.expect("the source fails in time").unwrap() {
            Err(error) => error.0,
            Ok(()) => panic!("the source stopped without an error"),
        }
    }

    /// Runs the same source again, as the engine does after a failure.
    fn restart(&mut self) {
        let (source, sink, cancel) = (self.source.clone(), self.sink.clone(), self.cancel.clone());
        self.task = Some(tokio::spawn(async move { source.run(sink, cancel).await }));
    }

    async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

fn name_of(object: &Value) -> String {
    object["metadata"]["name"].as_str().unwrap_or_default().to_string()
}

fn pair(kind: &str, name: &str) -> (String, String) {
    (kind.to_string(), name.to_string())
}

fn cm_watcher(namespace: &str, events: &[&str]) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "namespace": namespace, "events": events})
}

#[tokio::test]
async fn triggers_on_one_kind_share_a_watch_and_get_only_their_event_types() {
    let h = harness(HubOptions::default()).await;
    h.create_configmap("apps", "existing", json!({})).await;
    let mut creates_deletes = h.start("resource-watcher", cm_watcher("apps", &["create", "delete"]), false);
    let mut updates = h.start("resource-watcher", cm_watcher("apps", &["update"]), false);
    h.wait_for_watches("configmaps", 1).await;

    h.create_configmap("apps", "a", json!({})).await;
    h.set_data("apps", "a", "2").await;
    h.delete_configmap("apps", "a").await;

    assert_eq!(creates_deletes.next_pair().await, pair("create", "a"));
    assert_eq!(creates_deletes.next_pair().await, pair("delete", "a"));
    assert_eq!(updates.next_pair().await, pair("update", "a"));
    assert!(creates_deletes.drain(Duration::from_millis(300)).await.is_empty());
    assert!(updates.drain(Duration::from_millis(100)).await.is_empty());
    assert_eq!(h.cluster.watch_requests_for("configmaps"), 1);
    assert_eq!(h.kube.hub().watches_opened(), 1);
    creates_deletes.stop().await;
    updates.stop().await;
}

#[tokio::test]
async fn triggers_starting_together_ask_discovery_once() {
    let h = harness(HubOptions::default()).await;
    let running: Vec<Running> =
        (0..30).map(|_| h.start("resource-watcher", cm_watcher("apps", &["create"]), false)).collect();
    h.wait_for_watches("configmaps", 1).await;
    let discoveries = h.cluster.request_log().into_iter().filter(|(method, uri)| method == "GET" && uri == "/api/v1");
    assert_eq!(discoveries.count(), 1, "30 triggers on one kind share one discovery request");
    for source in running {
        source.stop().await;
    }
}

#[tokio::test]
async fn a_discovery_without_answer_fails_in_time_and_the_next_asker_tries_again() {
    let h = harness(HubOptions::default()).await;
    h.cluster.faults().delay(ktrigger_testcluster::DISCOVERY, Duration::from_secs(60));
    let mut stalled = h.start("resource-watcher", cm_watcher("apps", &["create"]), false);
    let run = tokio::time::timeout(Duration::from_secs(20), stalled.task.take().unwrap());
    let error = run.await.expect("the source gives up within 20 s").unwrap().unwrap_err();
    assert!(error.to_string().contains("no answer within 10s"), "{error}");

    h.cluster.faults().clear_delay(ktrigger_testcluster::DISCOVERY);
    let mut next = h.start("resource-watcher", cm_watcher("apps", &["create"]), false);
    h.wait_for_watches("configmaps", 1).await;
    h.create_configmap("apps", "after", json!({})).await;
    assert_eq!(next.next_pair().await, pair("create", "after"));
    next.stop().await;
}

#[tokio::test]
async fn triggers_with_different_selectors_share_one_watch_and_get_exactly_what_they_select() {
    let h = harness(HubOptions::default()).await;
    let mut labelled = h.start(
        "resource-watcher",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "namespace": "apps", "matchingLabels": {"team": "shop"}}),
        false,
    );
    let mut set_based = h.start(
        "resource-watcher",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "namespace": "apps",
            "labelSelector": "team notin (shop), !legacy", "events": ["create"]}),
        false,
    );
    let mut named = h.start(
        "resource-watcher",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "namespace": "apps", "name": "settings", "events": ["create"]}),
        false,
    );
    h.wait_for_watches("configmaps", 1).await;
    h.create_configmap("apps", "other", json!({"team": "ops"})).await;
    h.create_configmap("apps", "old", json!({"team": "ops", "legacy": "yes"})).await;
    h.create_configmap("apps", "cart", json!({"team": "shop"})).await;
    h.create_configmap("apps", "settings", json!({})).await;
    h.create_configmap("web", "cart", json!({"team": "shop"})).await;
    assert_eq!(labelled.next_pair().await, pair("create", "cart"));
    assert_eq!(set_based.next_pair().await, pair("create", "other"));
    assert_eq!(set_based.next_pair().await, pair("create", "settings"));
    assert_eq!(named.next_pair().await, pair("create", "settings"));
    assert!(labelled.drain(Duration::from_millis(300)).await.is_empty());
    assert!(set_based.drain(Duration::from_millis(100)).await.is_empty());
    assert!(named.drain(Duration::from_millis(100)).await.is_empty());
    assert_eq!(h.kube.hub().watches_opened(), 1);
    let watches = h.cluster.requests().into_iter().filter(|r| r.uri.contains("watch=true")).collect::<Vec<_>>();
    assert!(
        watches.iter().all(|r| !r.uri.contains("labelSelector") && !r.uri.contains("fieldSelector")),
        "selectors are evaluated here, not by the API server: {:?}",
        watches.iter().map(|r| &r.uri).collect::<Vec<_>>()
    );
    labelled.stop().await;
    set_based.stop().await;
    named.stop().await;
}

#[tokio::test]
async fn a_label_change_moves_an_object_in_and_out_of_a_selector() {
    let h = harness(HubOptions::default()).await;
    h.create_configmap("apps", "cart", json!({"team": "ops"})).await;
    let mut shop = h.start(
        "resource-watcher",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "namespace": "apps", "labelSelector": "team=shop"}),
        true,
    );
    let mut everything = h.start("resource-watcher", cm_watcher("apps", &[]), false);
    h.wait_for_watches("configmaps", 1).await;
    let cms = h.configmaps("apps");
    let relabel = |team: &'static str| {
        let cms = cms.clone();
        async move {
            let patch = Patch::Merge(json!({"metadata": {"labels": {"team": team}}}));
            cms.patch("cart", &PatchParams::default(), &patch).await.unwrap();
        }
    };
    h.set_data("apps", "cart", "2").await;
    relabel("shop").await;
    h.set_data("apps", "cart", "3").await;
    relabel("ops").await;
    h.set_data("apps", "cart", "4").await;
    h.delete_configmap("apps", "cart").await;

    let entered = shop.next().await;
    assert_eq!((entered.meta.event_type.as_str(), entered.object["data"]["v"].as_str()), ("create", Some("2")));
    assert!(entered.old_object.is_none(), "a create has no oldObject");
    let updated = shop.next().await;
    assert_eq!(updated.meta.event_type, "update");
    assert_eq!(updated.old_object.as_ref().unwrap()["metadata"]["labels"]["team"], "shop");
    let left = shop.next().await;
    assert_eq!(left.meta.event_type, "delete");
    assert_eq!(left.object["metadata"]["labels"]["team"], "ops", "the object as it is now");
    assert!(shop.drain(Duration::from_millis(300)).await.is_empty(), "nothing once it left");
    let all: Vec<String> = everything.drain(Duration::from_millis(100)).await.into_iter().map(|(t, _)| t).collect();
    assert_eq!(all, ["update", "update", "update", "update", "update", "delete"]);
    shop.stop().await;
    everything.stop().await;
}

#[tokio::test]
async fn many_triggers_with_distinct_selectors_open_one_watch_per_resource() {
    let h = harness(HubOptions::default()).await;
    let mut running = Vec::new();
    for i in 0..50 {
        let selector = json!({"apiVersion": "v1", "kind": "ConfigMap", "namespace": "apps",
            "labelSelector": format!("shard={i}"), "events": ["create"]});
        running.push(h.start("resource-watcher", selector, false));
        let selector = json!({"apiVersion": "v1", "kind": "Secret", "namespace": "apps",
            "matchingLabels": {"shard": i.to_string()}, "events": ["create"]});
        running.push(h.start("resource-watcher", selector, false));
    }
    h.wait_for_watches("configmaps", 1).await;
    h.wait_for_watches("secrets", 1).await;
    h.create_configmap("apps", "c7", json!({"shard": "7"})).await;
    assert_eq!(running[14].next_pair().await, pair("create", "c7"));
    assert_eq!(h.kube.hub().watches_opened(), 2);
    assert_eq!(h.kube.hub().open_watches(), 2);
    for (i, other) in running.iter_mut().enumerate().filter(|(i, _)| *i != 14) {
        assert!(other.drain(Duration::from_millis(5)).await.is_empty(), "trigger {i}");
    }
    for r in running {
        r.stop().await;
    }
}

#[tokio::test]
async fn a_namespace_trigger_is_served_by_a_running_watch_of_all_namespaces_of_the_same_identity() {
    let h = harness(HubOptions::default()).await;
    let mut all = h.start("resource-watcher", cm_watcher("", &["create"]), false);
    h.wait_for_watches("configmaps", 1).await;
    // The wide watch has synced once it reports a change.
    h.create_configmap("web", "first", json!({})).await;
    assert_eq!(all.next_pair().await, pair("create", "first"));
    let mut apps = h.start("resource-watcher", cm_watcher("apps", &["create"]), false);
    h.create_configmap("web", "elsewhere", json!({})).await;
    h.create_configmap("apps", "here", json!({})).await;
    assert_eq!(apps.next_pair().await, pair("create", "here"));
    assert!(apps.drain(Duration::from_millis(300)).await.is_empty(), "only its own namespace");
    assert_eq!(all.drain(Duration::from_millis(100)).await, [pair("create", "elsewhere"), pair("create", "here")]);
    assert_eq!(h.kube.hub().watches_opened(), 1);
    assert!(watchers_of(&h.cluster, "configmaps").iter().all(|(_, path)| path == "/api/v1/configmaps"));
    all.stop().await;
    apps.stop().await;
}

#[tokio::test]
async fn existing_objects_are_reported_only_with_replay_existing() {
    let h = harness(HubOptions::default()).await;
    h.create_configmap("apps", "before", json!({})).await;
    let mut plain = h.start("resource-watcher", cm_watcher("apps", &[]), false);
    let mut replay = h.start(
        "resource-watcher",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "namespace": "apps", "replayExisting": true}),
        false,
    );
    assert_eq!(replay.next_pair().await, pair("create", "before"));
    h.wait_for_watches("configmaps", 1).await;
    // A trigger that joins the running watch later gets the existing objects too.
    let mut late = h.start(
        "resource-watcher",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "namespace": "apps", "replayExisting": true}),
        false,
    );
    assert_eq!(late.next_pair().await, pair("create", "before"));
    h.create_configmap("apps", "after", json!({})).await;
    assert_eq!(plain.next_pair().await, pair("create", "after"));
    assert_eq!(replay.next_pair().await, pair("create", "after"));
    assert_eq!(late.next_pair().await, pair("create", "after"));
    assert!(plain.drain(Duration::from_millis(300)).await.is_empty());
    assert_eq!(h.cluster.watch_requests_for("configmaps"), 1);
    for running in [plain, replay, late] {
        running.stop().await;
    }
}

#[tokio::test]
async fn a_replay_over_several_list_pages_reports_every_existing_object_once() {
    let h = harness(HubOptions::default()).await;
    // Lists come in pages of 100 objects: three pages.
    let names: Vec<String> = (0..201).map(|i| format!("cm-{i:04}")).collect();
    for name in &names {
        h.create_configmap("apps", name, json!({})).await;
    }
    let mut plain = h.start("resource-watcher", cm_watcher("apps", &[]), false);
    h.wait_for_watches("configmaps", 1).await;
    h.create_configmap("apps", "synced", json!({})).await;
    assert_eq!(plain.next_pair().await, pair("create", "synced"));
    let mut late = h.start(
        "resource-watcher",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "namespace": "apps", "replayExisting": true}),
        false,
    );
    let first = late.next().await;
    assert_eq!((first.object["apiVersion"].as_str(), first.object["kind"].as_str()), (Some("v1"), Some("ConfigMap")));
    assert_eq!(first.object["data"]["v"], "1");
    let mut replayed = vec![name_of(&first.object)];
    replayed.extend(late.drain(Duration::from_millis(500)).await.into_iter().map(|(kind, name)| {
        assert_eq!(kind, "create", "{name}");
        name
    }));
    replayed.sort();
    let mut expected = names.clone();
    expected.push("synced".into());
    assert_eq!(replayed, expected, "each existing object once");
    let pages = h.cluster.request_log().into_iter().filter(|(method, uri)| {
        method == "GET" && uri.starts_with("/api/v1/namespaces/apps/configmaps?") && !uri.contains("watch=")
    });
    // Two later pages for the watch's own list (201 objects), two for the replay's (202).
    assert!(pages.filter(|(_, uri)| uri.contains("continue=")).count() >= 4, "the replay read its later pages");
    plain.stop().await;
    late.stop().await;
}

#[tokio::test]
async fn old_objects_are_kept_only_for_triggers_that_read_them() {
    let h = harness(HubOptions::default()).await;
    let mut with_old = h.start("resource-watcher", cm_watcher("apps", &["update"]), true);
    let mut without = h.start("resource-watcher", cm_watcher("web", &["update"]), false);
    h.wait_for_watches("configmaps", 2).await;
    h.create_configmap("apps", "a", json!({})).await;
    h.create_configmap("web", "a", json!({})).await;
    h.set_data("apps", "a", "2").await;
    h.set_data("web", "a", "2").await;
    let event = with_old.next().await;
    assert_eq!(event.object["data"]["v"], "2");
    assert_eq!(event.old_object.as_ref().unwrap()["data"]["v"], "1");
    let event = without.next().await;
    assert_eq!(event.object["data"]["v"], "2");
    assert!(event.old_object.is_none());
    with_old.stop().await;
    without.stop().await;
}

#[tokio::test]
async fn a_410_relist_reports_each_change_once_and_unchanged_objects_not_at_all() {
    let h = harness(HubOptions::default()).await;
    let mut all = h.start("resource-watcher", cm_watcher("apps", &[]), false);
    h.wait_for_watches("configmaps", 1).await;
    for name in ["a", "b", "c"] {
        h.create_configmap("apps", name, json!({})).await;
    }
    assert_eq!(all.drain(Duration::from_millis(500)).await.len(), 3);

    h.cluster.faults().gone_on_next_watch("configmaps");
    h.cluster.faults().drop_watches("configmaps");
    h.set_data("apps", "a", "2").await;
    h.delete_configmap("apps", "b").await;
    h.create_configmap("apps", "d", json!({})).await;

    let mut seen = all.drain(Duration::from_secs(3)).await;
    seen.sort();
    assert_eq!(seen, [pair("create", "d"), pair("delete", "b"), pair("update", "a")]);
    assert!(h.cluster.watch_requests_for("configmaps") >= 3, "the watch was resumed, refused and re-opened");
    h.set_data("apps", "c", "2").await;
    assert_eq!(all.next_pair().await, pair("update", "c"));
    all.stop().await;
}

#[tokio::test]
async fn a_dropped_stream_resumes_without_loss_or_duplicates() {
    let h = harness(HubOptions::default()).await;
    let mut all = h.start("resource-watcher", cm_watcher("apps", &[]), false);
    h.wait_for_watches("configmaps", 1).await;
    h.create_configmap("apps", "a", json!({})).await;
    assert_eq!(all.next_pair().await, pair("create", "a"));
    for round in 2..5 {
        h.cluster.faults().drop_watches("configmaps");
        h.set_data("apps", "a", &round.to_string()).await;
    }
    let seen = all.drain(Duration::from_secs(2)).await;
    assert_eq!(seen, vec![pair("update", "a"); 3]);
    all.stop().await;
}

impl Harness {
    /// Waits until the hub has counted `n` watch restarts and the watch is open again.
    async fn wait_for_restarts(&self, n: u64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.kube.hub().watch_restarts() < n {
            assert!(tokio::time::Instant::now() < deadline, "{n} watch restarts in time");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.wait_for_watches("configmaps", 1).await;
        assert_eq!(self.kube.hub().watch_restarts(), n, "no more restarts than the faults cause");
    }
}

#[tokio::test]
async fn watch_restarts_count_resumed_relisted_and_retried_watches() {
    let h = harness(HubOptions::default()).await;
    let mut creates = h.start("resource-watcher", cm_watcher("apps", &["create"]), false);
    h.wait_for_watches("configmaps", 1).await;
    assert_eq!(h.kube.hub().watch_restarts(), 0);

    // The stream ends: the watch resumes from where it was.
    h.cluster.faults().drop_watches("configmaps");
    h.wait_for_restarts(1).await;
    // The resumed watch gets 410 Gone: the resumption, then the re-list.
    h.cluster.faults().gone_on_next_watch("configmaps");
    h.cluster.faults().drop_watches("configmaps");
    h.wait_for_restarts(3).await;
    // The resumed watch fails with a 500: the failed resumption, then its retry.
    h.cluster.faults().fail_next(1, "configmaps");
    h.cluster.faults().drop_watches("configmaps");
    h.wait_for_restarts(5).await;

    h.create_configmap("apps", "after", json!({})).await;
    assert_eq!(creates.next_pair().await, pair("create", "after"));
    // Bookmarks and a quiet stream restart nothing.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(h.kube.hub().watch_restarts(), 5);
    assert_eq!(h.kube.hub().watches_opened(), 1, "restarts are not new watches");
    creates.stop().await;
}

#[tokio::test]
async fn an_unknown_kind_fails_on_its_trigger_and_works_once_its_crd_exists() {
    let h = harness(HubOptions::default()).await;
    let mut widgets = h.start(
        "resource-watcher",
        json!({"apiVersion": "example.io/v1", "kind": "Widget", "namespace": "apps"}),
        false,
    );
    let error = widgets.failure().await;
    assert!(error.contains("Widget") && error.contains("example.io/v1") && error.contains("CRD"), "{error}");

    let crds: Api<CustomResourceDefinition> = Api::all(h.client.clone());
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.io"},
        "spec": {"group": "example.io", "scope": "Namespaced",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                 "versions": [{"name": "v1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
    });
    crds.create(&PostParams::default(), &serde_json::from_value(crd).unwrap()).await.unwrap();
    widgets.restart();
    h.wait_for_watches("widgets", 1).await;
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("example.io", "v1", "Widget"));
    let api: Api<DynamicObject> = Api::namespaced_with(h.client.clone(), "apps", &resource);
    let widget = DynamicObject::new("w1", &resource).data(json!({"spec": {"size": 3}}));
    api.create(&PostParams::default(), &widget).await.unwrap();
    let event = widgets.next().await;
    assert_eq!((event.meta.event_type.as_str(), event.object["kind"].as_str()), ("create", Some("Widget")));
    assert_eq!(event.object["spec"]["size"], 3);
    widgets.stop().await;
}

#[tokio::test]
async fn a_forbidden_list_is_reported_on_the_trigger() {
    let h = harness(HubOptions::default()).await;
    h.cluster.faults().forbid("list", "secrets");
    let mut secrets =
        h.start("resource-watcher", json!({"apiVersion": "v1", "kind": "Secret", "namespace": "apps"}), false);
    let error = secrets.failure().await;
    assert!(error.contains("403") && error.contains("RBAC") && error.contains("secrets"), "{error}");

    // Once allowed, the watch that kept retrying syncs and the restarted source works.
    h.cluster.faults().allow("list", "secrets");
    h.wait_for_watches("secrets", 1).await;
    secrets.restart();
    let api: Api<Secret> = Api::namespaced(h.client.clone(), "apps");
    api.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "s"}})).unwrap())
        .await
        .unwrap();
    assert_eq!(secrets.next_pair().await, pair("create", "s"));
    secrets.stop().await;
}

#[tokio::test]
async fn a_watch_broken_for_too_long_is_reported_unhealthy() {
    let h = harness(HubOptions { unhealthy_after: Duration::from_secs(1), ..HubOptions::default() }).await;
    let mut all = h.start("resource-watcher", cm_watcher("apps", &[]), false);
    h.wait_for_watches("configmaps", 1).await;
    h.cluster.faults().fail_next(1000, "configmaps");
    h.cluster.faults().drop_watches("configmaps");
    let error = all.failure().await;
    assert!(error.contains("watch failing for") && error.contains("500"), "{error}");
    let unhealthy = h.kube.hub().unhealthy();
    assert_eq!(unhealthy.len(), 1, "readiness sees the broken watch: {unhealthy:?}");
    assert!(unhealthy[0].contains("watch failing for"), "{unhealthy:?}");
    all.stop().await;
}

#[tokio::test]
async fn the_watch_closes_with_its_last_trigger() {
    let h = harness(HubOptions::default()).await;
    let first = h.start("resource-watcher", cm_watcher("apps", &["create"]), false);
    let second = h.start("resource-watcher", cm_watcher("apps", &["delete"]), false);
    h.wait_for_watches("configmaps", 1).await;
    first.stop().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.cluster.open_watches_for("configmaps"), 1);
    second.stop().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while h.cluster.open_watches_for("configmaps") > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the watch closes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.kube.hub().open_watches(), 0);
}

fn kube_event(name: &str, reason: &str, message: &str, count: u32) -> KubeEvent {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "apps"},
        "involvedObject": {"kind": "Pod", "name": "web-1", "namespace": "apps"},
        "type": "Warning", "reason": reason, "message": message, "count": count,
        "firstTimestamp": "2026-01-01T10:00:00Z", "lastTimestamp": format!("2026-01-01T10:0{count}:00Z"),
    }))
    .unwrap()
}

#[tokio::test]
async fn k8s_events_presets_fire_again_when_an_event_repeats() {
    let h = harness(HubOptions::default()).await;
    let mut restarts =
        h.start("k8s-events", json!({"namespace": "apps", "presets": ["pod-restart", "oom-kill"]}), false);
    let mut everything = h.start("k8s-events", json!({"namespace": "apps"}), false);
    h.wait_for_watches("events", 1).await;
    let api: Api<KubeEvent> = Api::namespaced(h.client.clone(), "apps");
    api.create(&PostParams::default(), &kube_event("pull", "Failed", "Failed to pull image \"x\"", 1)).await.unwrap();
    api.create(&PostParams::default(), &kube_event("crash", "BackOff", "Back-off restarting failed container app", 1))
        .await
        .unwrap();
    api.patch(
        "crash",
        &PatchParams::default(),
        &Patch::Merge(json!({"count": 2, "lastTimestamp": "2026-01-01T10:02:00Z"})),
    )
    .await
    .unwrap();
    // An edit that is not a repeat does not fire.
    api.patch("crash", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"seen": "yes"}}})))
        .await
        .unwrap();

    let first = restarts.next().await;
    assert_eq!(first.meta.preset.as_deref(), Some("pod-restart"));
    assert_eq!((first.meta.event_type.as_str(), first.object["count"].as_u64()), ("create", Some(1)));
    assert_eq!(first.object["regarding"]["name"], "web-1");
    let repeat = restarts.next().await;
    assert_eq!((repeat.meta.event_type.as_str(), repeat.object["count"].as_u64()), ("update", Some(2)));
    assert_eq!(repeat.meta.time.to_rfc3339(), "2026-01-01T10:02:00+00:00");
    assert!(restarts.drain(Duration::from_millis(300)).await.is_empty());
    let all = everything.drain(Duration::from_millis(300)).await;
    assert_eq!(all, [pair("create", "pull"), pair("create", "crash"), pair("update", "crash")]);
    assert_eq!(h.cluster.watch_requests_for("events"), 1);
    restarts.stop().await;
    everything.stop().await;
}

/// The `Impersonate-User` of every watch request on `plural` so far (`None`: own identity).
fn watchers_of(cluster: &TestCluster, plural: &str) -> Vec<(Option<String>, String)> {
    let path = format!("/{plural}?");
    let mut seen: Vec<(Option<String>, String)> = cluster
        .requests()
        .into_iter()
        .filter(|r| r.uri.contains(&path) && r.uri.contains("watch=true"))
        .map(|r| (r.impersonate_user, r.uri.split('?').next().unwrap_or_default().to_string()))
        .collect();
    seen.sort();
    seen.dedup();
    seen
}

#[tokio::test]
async fn watches_are_made_as_the_trigger_service_identity_and_shared_only_through_access_reviews() {
    let robot_user = "system:serviceaccount:test:robot".to_string();
    let default_user = "system:serviceaccount:test:watcher".to_string();
    let path = "/api/v1/namespaces/test/configmaps".to_string();
    let policy = || IdentityPolicy::controller(Some("watcher".into()), false).unwrap();

    // Without access reviews: one watch per identity, none as the controller.
    let unshared = HubOptions { access_review_ttl: Duration::ZERO, ..HubOptions::default() };
    let h = harness_with(unshared, policy()).await;
    let build = |h: &Harness, account: Option<&str>| {
        h.run(h.build("resource-watcher", cm_watcher("test", &[]), account, SourceNeeds::default()).unwrap())
    };
    let mut robot = build(&h, Some("robot"));
    let other_robot = build(&h, Some("robot"));
    let default = build(&h, None);
    h.wait_for_watches("configmaps", 2).await;
    assert_eq!(
        watchers_of(&h.cluster, "configmaps"),
        vec![(Some(robot_user.clone()), path.clone()), (Some(default_user), path.clone())],
        "one watch per identity, none as the controller"
    );
    assert_eq!(h.kube.hub().open_watches(), 2);
    h.create_configmap("test", "c1", json!({})).await;
    assert_eq!(robot.next_pair().await, pair("create", "c1"));
    for running in [robot, other_robot, default] {
        running.stop().await;
    }

    // With them (the test cluster, without RBAC, allows every review): the second identity
    // joins the watch the first opened.
    let h = harness_with(HubOptions::default(), policy()).await;
    let robot = build(&h, Some("robot"));
    h.wait_for_watches("configmaps", 1).await;
    let mut default = build(&h, None);
    h.create_configmap("test", "c2", json!({})).await;
    assert_eq!(default.next_pair().await, pair("create", "c2"));
    assert_eq!(watchers_of(&h.cluster, "configmaps"), vec![(Some(robot_user), path)], "one watch, as robot");
    assert_eq!(h.kube.hub().open_watches(), 1);
    robot.stop().await;
    default.stop().await;
}

#[tokio::test]
async fn a_trigger_service_without_an_identity_reads_only_its_own_namespace() {
    let h = harness_with(HubOptions::default(), IdentityPolicy::controller(None, false).unwrap()).await;
    let all = json!({"apiVersion": "v1", "kind": "ConfigMap"});
    let mut own = h.run(h.build("resource-watcher", all, None, SourceNeeds::default()).unwrap());
    h.wait_for_watches("configmaps", 1).await;
    assert_eq!(watchers_of(&h.cluster, "configmaps"), vec![(None, "/api/v1/namespaces/test/configmaps".to_string())]);
    h.create_configmap("other", "elsewhere", json!({})).await;
    h.create_configmap("test", "here", json!({})).await;
    assert_eq!(own.next_pair().await, pair("create", "here"));

    let error = h.build("resource-watcher", cm_watcher("other", &[]), None, SourceNeeds::default()).err().unwrap();
    assert!(
        error.starts_with(
            "properties.namespace: namespace \"other\" is outside the TriggerService's namespace \"test\""
        ),
        "{error}"
    );
    let events = json!({"namespace": "kube-system"});
    let error = h.build("k8s-events", events, None, SourceNeeds::default()).err().unwrap();
    assert!(error.contains("namespace \"kube-system\" is outside"), "{error}");

    let nodes = json!({"apiVersion": "v1", "kind": "Node"});
    let mut nodes = h.run(h.build("resource-watcher", nodes, None, SourceNeeds::default()).unwrap());
    let error = nodes.failure().await;
    assert!(error.starts_with("kind Node is cluster-scoped, and all namespaces or cluster-scoped objects"), "{error}");
    assert_eq!(h.cluster.watch_requests_for("nodes"), 0, "no Node watch was opened");
    own.stop().await;
}

#[tokio::test]
async fn a_refused_watch_names_the_identity_resource_and_namespace() {
    let h = harness_with(HubOptions::default(), IdentityPolicy::controller(None, false).unwrap()).await;
    h.cluster.faults().forbid("list", "secrets");
    let secrets = json!({"apiVersion": "v1", "kind": "Secret", "namespace": "test", "replayExisting": true});
    let mut source = h.run(h.build("resource-watcher", secrets, Some("robot"), SourceNeeds::default()).unwrap());
    let error = source.failure().await;
    assert!(error.starts_with("cannot list v1/secrets in namespace test as ServiceAccount test/robot: 403"), "{error}");
    assert!(
        error.ends_with(
            "(RBAC: ServiceAccount test/robot needs list and watch on secrets (core group) in namespace test)"
        ),
        "{error}"
    );
    let asked = h.cluster.requests().iter().any(|r| {
        r.uri.starts_with("/api/v1/namespaces/test/secrets")
            && r.impersonate_user.as_deref() == Some("system:serviceaccount:test:robot")
    });
    assert!(asked, "the refused list was made as the ServiceAccount");
    assert_eq!(h.kube.hub().unhealthy(), Vec::<String>::new(), "one trigger's refusal leaves readiness alone");
    source.stop().await;
}
