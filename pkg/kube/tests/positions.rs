//! What `resource-watcher` and `k8s-events` triggers report after a restart over a durable state
//! store, against the project's test cluster, or a real cluster when `KTRIGGER_TEST_KUBECONFIG`
//! names a kubeconfig (each test then works in a namespace of its own). The state store is the
//! embedded one, in a temporary directory. A restart is: stop the source, let its watch close,
//! change things, build and run a new source over the same store.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Event as KubeEvent, Namespace};
use ktrigger_core::{
    BuildContext, Envelope, EventSink, Handled, RedbStore, Registry, SharedEvent, Source, SourceError, SourceNeeds,
    SourceState, StateStore, TriggerId, stable_id,
};
use ktrigger_kube::{Cluster, HubOptions, IdentityPolicy, register};
use ktrigger_testcluster::TestCluster;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(500);

struct Harness {
    _cluster: Option<TestCluster>,
    client: Client,
    kube: Cluster,
    registry: Registry,
    store: Arc<RedbStore>,
    _dir: tempfile::TempDir,
    namespace: String,
}

/// A harness on the test cluster, or on the cluster of `KTRIGGER_TEST_KUBECONFIG` in a new
/// namespace named after `test`.
async fn harness(test: &str) -> Harness {
    ktrigger_kube::ensure_crypto_provider();
    let (cluster, client, namespace) = match std::env::var("KTRIGGER_TEST_KUBECONFIG") {
        Ok(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path).expect("KTRIGGER_TEST_KUBECONFIG is readable");
            let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
            let client = Client::try_from(config).unwrap();
            let namespace = format!("kt-pos-{test}-{}", std::process::id());
            let object = serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap();
            Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &object).await.unwrap();
            (None, client, namespace)
        }
        Err(_) => {
            let cluster = TestCluster::start().await;
            let client = cluster.client().await;
            (Some(cluster), client, "apps".to_string())
        }
    };
    let kube = Cluster::with_client(client.clone(), IdentityPolicy::local(), HubOptions::default(), Vec::new());
    let mut registry = Registry::default();
    register(&mut registry, kube.clone());
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = RedbStore::open(dir.path()).unwrap();
    Harness { _cluster: cluster, client, kube, registry, store: Arc::new(store), _dir: dir, namespace }
}

/// One running source of trigger `name` and what it sent.
struct Running {
    events: mpsc::Receiver<Envelope>,
    cancel: CancellationToken,
    task: Option<JoinHandle<Result<(), SourceError>>>,
    source: Arc<dyn Source>,
    sink: EventSink,
}

impl Harness {
    /// The stored object entries of `trigger`: uid -> entry.
    async fn objects(&self, trigger: &str) -> BTreeMap<String, Value> {
        let prefix = format!("test/svc/{trigger}/source/obj/");
        let entries = self.store.load(&prefix).await.unwrap();
        entries
            .into_iter()
            .map(|(key, value)| (key[prefix.len()..].to_string(), serde_json::from_slice(&value).unwrap()))
            .collect()
    }

    /// Waits until `trigger`'s stored entries satisfy `done`.
    async fn wait_for(&self, trigger: &str, what: &str, done: impl Fn(&BTreeMap<String, Value>) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let stored = self.objects(trigger).await;
            if done(&stored) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{trigger}: {what}; stored: {stored:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn start(&self, name: &str, source_type: &str, properties: Value, old_object: bool) -> Running {
        let trigger = TriggerId { namespace: "test".into(), service: "svc".into(), trigger: name.into() };
        let state = SourceState::new(self.store.clone(), &trigger);
        let context = BuildContext { state, needs: SourceNeeds { old_object }, ..BuildContext::new(trigger) };
        let source = self.registry.source(source_type).unwrap().build(&properties, &context).unwrap();
        let (sink, events) = EventSink::channel(1024);
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let (source, sink, cancel) = (source.clone(), sink.clone(), cancel.clone());
            async move { source.run(sink, cancel).await }
        });
        Running { events, cancel, task: Some(task), source, sink }
    }

    fn configmaps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn events(&self) -> Api<KubeEvent> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// A resource-watcher of the test's ConfigMaps (not the cluster's own, e.g. kube-root-ca.crt).
    fn cm_watcher(&self, events: &[&str]) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "namespace": self.namespace, "events": events,
            "matchingLabels": {"test": "positions"}})
    }

    /// Removes the namespace of a real cluster.
    async fn clean_up(self) {
        if self._cluster.is_none() {
            let _ = Api::<Namespace>::all(self.client.clone()).delete(&self.namespace, &DeleteParams::default()).await;
        }
    }

    async fn create_configmap(&self, name: &str) {
        let cm = serde_json::from_value(json!({"metadata": {"name": name, "labels": {"test": "positions"}},
            "data": {"v": "1"}}))
        .unwrap();
        self.configmaps().create(&PostParams::default(), &cm).await.unwrap();
    }

    async fn create_labelled(&self, name: &str, tier: &str) {
        let cm =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": {"test": "positions", "tier": tier}},
            "data": {"v": "1"}}))
            .unwrap();
        self.configmaps().create(&PostParams::default(), &cm).await.unwrap();
    }

    async fn set_tier(&self, name: &str, tier: &str) {
        let patch = Patch::Merge(json!({"metadata": {"labels": {"tier": tier}}}));
        self.configmaps().patch(name, &PatchParams::default(), &patch).await.unwrap();
    }

    async fn set_data(&self, name: &str, value: &str) {
        let patch = Patch::Merge(json!({"data": {"v": value}}));
        self.configmaps().patch(name, &PatchParams::default(), &patch).await.unwrap();
    }

    async fn delete_configmap(&self, name: &str) {
        self.configmaps().delete(name, &DeleteParams::default()).await.unwrap();
    }

    async fn uid_of(&self, name: &str) -> String {
        self.configmaps().get(name).await.unwrap().metadata.uid.unwrap()
    }

    /// Waits until `running` (trigger `trigger`, on ConfigMaps) has caught up and sees changes
    /// live: a probe ConfigMap made now is in its index, recorded at catch-up or reported.
    async fn wait_until_live(&self, trigger: &str, running: &mut Running) {
        self.create_configmap("probe").await;
        let uid = self.uid_of("probe").await;
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.objects(trigger).await.contains_key(&uid) {
            assert!(tokio::time::Instant::now() < deadline, "{trigger} sees the probe in time");
            if let Ok(Some(envelope)) = tokio::time::timeout(Duration::from_millis(20), running.events.recv()).await {
                envelope.answer(Handled::Fired);
            }
        }
    }

    /// Waits until no watch is open: every trigger stopped.
    async fn wait_until_closed(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.kube.hub().open_watches() > 0 {
            assert!(tokio::time::Instant::now() < deadline, "the watches close");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Running {
    /// `count` events, then every further one until none arrived for `QUIET`, each answered
    /// with `handled`.
    async fn collect_as(&mut self, count: usize, handled: Handled) -> Vec<SharedEvent> {
        let mut seen = Vec::new();
        loop {
            let wait = if seen.len() < count { WAIT } else { QUIET };
            let Ok(Some(envelope)) = tokio::time::timeout(wait, self.events.recv()).await else { break };
            seen.push(envelope.event.clone());
            envelope.answer(handled.clone());
        }
        seen
    }

    /// `count` events and any further ones, answered as fired.
    async fn collect(&mut self, count: usize) -> Vec<SharedEvent> {
        self.collect_as(count, Handled::Fired).await
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

fn summary(events: &[SharedEvent]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| (e.meta.event_type.clone(), e.object["metadata"]["name"].as_str().unwrap_or_default().to_string()))
        .collect()
}

/// The lists of ConfigMaps (not watches, not gets of one) `cluster` received after its first
/// `before` requests.
fn configmap_lists_since(cluster: &TestCluster, before: usize) -> usize {
    cluster.requests()[before..]
        .iter()
        .filter(|r| {
            let path = r.uri.split('?').next().unwrap_or_default();
            r.method == "GET" && path.ends_with("/configmaps") && !r.uri.contains("watch=")
        })
        .count()
}

fn pair(kind: &str, name: &str) -> (String, String) {
    (kind.to_string(), name.to_string())
}

fn rv(object: &Value) -> &str {
    object["metadata"]["resourceVersion"].as_str().unwrap()
}

#[tokio::test]
async fn resource_watchers_get_exactly_the_changes_made_while_they_were_stopped() {
    let h = harness("changes").await;
    for name in ["same", "changed", "removed"] {
        h.create_configmap(name).await;
    }
    let creates_deletes = h.start("creates-deletes", "resource-watcher", h.cm_watcher(&["create", "delete"]), false);
    let updates = h.start("updates", "resource-watcher", h.cm_watcher(&["update"]), true);
    // The first start records what exists without reporting it.
    for trigger in ["creates-deletes", "updates"] {
        h.wait_for(trigger, "three objects recorded", |stored| stored.len() == 3).await;
    }
    creates_deletes.stop().await;
    updates.stop().await;
    h.wait_until_closed().await;

    h.create_configmap("new").await;
    h.set_data("changed", "2").await;
    let removed_uid = h.uid_of("removed").await;
    h.delete_configmap("removed").await;

    let mut creates_deletes =
        h.start("creates-deletes", "resource-watcher", h.cm_watcher(&["create", "delete"]), false);
    let mut updates = h.start("updates", "resource-watcher", h.cm_watcher(&["update"]), true);
    let mut seen = creates_deletes.collect(2).await;
    seen.sort_by_key(|e| e.meta.event_type.clone());
    assert_eq!(summary(&seen), [pair("create", "new"), pair("delete", "removed")]);
    let deleted = &seen[1];
    assert_eq!(deleted.object["data"]["v"], "1", "a delete while stopped carries the last known object");
    assert_eq!(deleted.meta.id, stable_id(&[&removed_uid, rv(&deleted.object), "delete"]));
    let update = updates.collect(1).await;
    assert_eq!(summary(&update), [pair("update", "changed")]);
    assert_eq!(update[0].object["data"]["v"], "2");
    assert_eq!(update[0].old_object.as_ref().unwrap()["data"]["v"], "1");
    let changed_uid = h.uid_of("changed").await;
    assert_eq!(update[0].meta.id, stable_id(&[&changed_uid, rv(&update[0].object), "update"]));

    // Both indexes followed every change, reported to them or not.
    for trigger in ["creates-deletes", "updates"] {
        h.wait_for(trigger, "same, changed and new", |stored| {
            stored.len() == 3
                && !stored.contains_key(&removed_uid)
                && stored[&changed_uid]["rv"] == rv(&update[0].object)
        })
        .await;
    }
    // Once caught up, changes are reported as they happen; a delete is identified by the
    // resourceVersion before it, as after a restart.
    h.set_data("same", "3").await;
    assert_eq!(summary(&updates.collect(1).await), [pair("update", "same")]);
    let before = h.configmaps().get("new").await.unwrap().metadata;
    h.delete_configmap("new").await;
    let deleted = creates_deletes.collect(1).await;
    assert_eq!(summary(&deleted), [pair("delete", "new")]);
    let (uid, version) = (before.uid.unwrap(), before.resource_version.unwrap());
    assert_eq!(deleted[0].meta.id, stable_id(&[&uid, &version, "delete"]));
    creates_deletes.stop().await;
    updates.stop().await;
    h.clean_up().await;
}

#[tokio::test]
async fn a_change_the_trigger_could_not_store_is_reported_again_with_the_same_id() {
    let h = harness("refused").await;
    let mut running = h.start("creates", "resource-watcher", h.cm_watcher(&["create"]), false);
    h.wait_until_live("creates", &mut running).await;
    h.create_configmap("a").await;
    let refused = running.collect_as(1, Handled::NotStored("disk full".into())).await;
    assert_eq!(summary(&refused), [pair("create", "a")]);
    let failure = running.failure().await;
    assert!(failure.contains("was not stored (disk full)"), "{failure}");
    let uid = h.uid_of("a").await;
    assert!(!h.objects("creates").await.contains_key(&uid), "the position did not move past the event");

    running.restart();
    let again = running.collect(1).await;
    assert_eq!(summary(&again), [pair("create", "a")]);
    assert_eq!(again[0].meta.id, refused[0].meta.id);
    h.wait_for("creates", "a recorded", |stored| stored.contains_key(&uid)).await;
    running.stop().await;
    h.clean_up().await;
}

fn kube_event(namespace: &str, name: &str, count: u32) -> KubeEvent {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace},
        "involvedObject": {"kind": "Pod", "name": name, "namespace": namespace},
        "type": "Warning", "reason": "BackOff", "message": "Back-off restarting failed container app",
        "count": count, "firstTimestamp": "2026-01-01T10:00:00Z",
        "lastTimestamp": format!("2026-01-01T10:0{count}:00Z"),
    }))
    .unwrap()
}

#[tokio::test]
async fn k8s_events_that_repeated_while_stopped_fire_once_and_old_ones_do_not() {
    let h = harness("events").await;
    let api = h.events();
    let properties = json!({"namespace": h.namespace, "presets": ["pod-restart"]});
    let mut running = h.start("restarts", "k8s-events", properties.clone(), false);
    // Live once an Event made now is in the index, recorded at catch-up or reported.
    api.create(&PostParams::default(), &kube_event(&h.namespace, "probe", 1)).await.unwrap();
    let probe = api.get("probe").await.unwrap().metadata.uid.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !h.objects("restarts").await.contains_key(&probe) {
        assert!(tokio::time::Instant::now() < deadline, "the probe Event is seen in time");
        if let Ok(Some(envelope)) = tokio::time::timeout(Duration::from_millis(20), running.events.recv()).await {
            envelope.answer(Handled::Fired);
        }
    }
    for name in ["old", "crash", "expired"] {
        api.create(&PostParams::default(), &kube_event(&h.namespace, name, 1)).await.unwrap();
    }
    assert_eq!(running.collect(3).await.len(), 3);
    h.wait_for("restarts", "four Events recorded", |stored| stored.len() == 4).await;
    running.stop().await;
    h.wait_until_closed().await;

    let patch =
        |count: u32| Patch::Merge(json!({"count": count, "lastTimestamp": format!("2026-01-01T10:0{count}:00Z")}));
    api.patch("crash", &PatchParams::default(), &patch(2)).await.unwrap();
    api.patch("crash", &PatchParams::default(), &patch(3)).await.unwrap();
    let expired = api.get("expired").await.unwrap().metadata.uid.unwrap();
    api.delete("expired", &DeleteParams::default()).await.unwrap();

    let mut running = h.start("restarts", "k8s-events", properties, false);
    let fired = running.collect(1).await;
    assert_eq!(summary(&fired), [pair("update", "crash")]);
    assert_eq!(fired[0].object["count"], 3);
    let crash = api.get("crash").await.unwrap().metadata.uid.unwrap();
    assert_eq!(fired[0].meta.id, stable_id(&[&crash, "3"]));
    h.wait_for("restarts", "the gone Event forgotten", |stored| {
        stored.len() == 3 && !stored.contains_key(&expired) && stored[&crash]["occurrences"] == 3
    })
    .await;
    running.stop().await;
    h.clean_up().await;
}

#[tokio::test]
async fn the_stored_index_holds_exactly_the_objects_listed() {
    let h = harness("bounds").await;
    for i in 0..30 {
        h.create_configmap(&format!("cm-{i}")).await;
    }
    let watcher = h.cm_watcher(&["create", "delete"]);
    let mut running = h.start("all", "resource-watcher", watcher.clone(), false);
    h.wait_for("all", "30 objects recorded", |stored| stored.len() == 30).await;
    for i in 0..10 {
        h.delete_configmap(&format!("cm-{i}")).await;
    }
    for i in 30..35 {
        h.create_configmap(&format!("cm-{i}")).await;
    }
    assert_eq!(running.collect(15).await.len(), 15);
    running.stop().await;
    h.wait_until_closed().await;
    for i in 10..20 {
        h.delete_configmap(&format!("cm-{i}")).await;
    }
    for i in 35..40 {
        h.create_configmap(&format!("cm-{i}")).await;
    }

    let mut running = h.start("all", "resource-watcher", watcher, false);
    assert_eq!(running.collect(15).await.len(), 15);
    let listed: BTreeSet<String> = h
        .configmaps()
        .list(&ListParams::default().labels("test=positions"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|cm| cm.metadata.uid)
        .collect();
    assert_eq!(listed.len(), 20);
    h.wait_for("all", "exactly the listed objects", |stored| stored.keys().cloned().collect::<BTreeSet<_>>() == listed)
        .await;
    let bytes: usize = h.objects("all").await.values().map(|v| serde_json::to_vec(v).unwrap().len()).sum();
    eprintln!(
        "stored index: {} objects, {} bytes per ConfigMap with its last state",
        listed.len(),
        bytes / listed.len()
    );
    running.stop().await;
    h.clean_up().await;
}

#[tokio::test]
async fn objects_moved_in_or_out_of_a_selector_are_creates_and_deletes_live_and_after_a_restart() {
    let h = harness("selector").await;
    h.create_labelled("stays", "gold").await;
    h.create_labelled("leaves", "gold").await;
    h.create_labelled("joins", "silver").await;
    let gold = json!({"apiVersion": "v1", "kind": "ConfigMap", "namespace": h.namespace,
        "labelSelector": "test=positions,tier in (gold)"});
    let running = h.start("gold", "resource-watcher", gold.clone(), false);
    let (stays, leaves, joins) = (h.uid_of("stays").await, h.uid_of("leaves").await, h.uid_of("joins").await);
    h.wait_for("gold", "the two gold objects recorded", |stored| {
        stored.keys().cloned().collect::<BTreeSet<_>>() == BTreeSet::from([stays.clone(), leaves.clone()])
    })
    .await;
    running.stop().await;
    h.wait_until_closed().await;

    let known = h.configmaps().get("leaves").await.unwrap().metadata.resource_version.unwrap();
    h.set_tier("leaves", "silver").await;
    h.set_tier("joins", "gold").await;
    let mut running = h.start("gold", "resource-watcher", gold, false);
    let mut seen = running.collect(2).await;
    seen.sort_by_key(|e| e.meta.event_type.clone());
    assert_eq!(summary(&seen), [pair("create", "joins"), pair("delete", "leaves")]);
    assert_eq!(seen[1].meta.id, stable_id(&[&leaves, &known, "delete"]), "identified by what the trigger last saw");
    h.wait_for("gold", "stays and joins", |stored| {
        stored.keys().cloned().collect::<BTreeSet<_>>() == BTreeSet::from([stays.clone(), joins.clone()])
    })
    .await;

    // Live: the same moves, told the same way; changes outside the selector are not seen.
    let known = h.configmaps().get("joins").await.unwrap().metadata.resource_version.unwrap();
    h.set_tier("joins", "silver").await;
    h.set_data("joins", "2").await;
    h.set_tier("leaves", "gold").await;
    let seen = running.collect(2).await;
    assert_eq!(summary(&seen), [pair("delete", "joins"), pair("create", "leaves")]);
    assert_eq!(seen[0].meta.id, stable_id(&[&joins, &known, "delete"]), "as after a restart");
    assert_eq!(seen[0].object["metadata"]["labels"]["tier"], "silver", "the object as it is now");
    h.wait_for("gold", "stays and leaves", |stored| {
        stored.keys().cloned().collect::<BTreeSet<_>>() == BTreeSet::from([stays.clone(), leaves.clone()])
    })
    .await;
    running.stop().await;
    h.clean_up().await;
}

#[tokio::test]
async fn triggers_sharing_a_watch_catch_up_together_from_one_list() {
    const TRIGGERS: usize = 12;
    let h = harness("together").await;
    for i in 0..TRIGGERS {
        for copy in ["a", "b"] {
            h.create_labelled(&format!("cm-{i}-{copy}"), &format!("t{i}")).await;
        }
    }
    // On the test cluster, slow lists: every trigger subscribes while the watch's first list
    // runs, and the requests show how many lists their catch-ups took.
    let requests_before = h._cluster.as_ref().map(|cluster| {
        cluster.faults().delay("configmaps", Duration::from_millis(300));
        cluster.requests().len()
    });
    let mut running: Vec<Running> = (0..TRIGGERS)
        .map(|i| {
            let mut watcher = h.cm_watcher(&["create"]);
            watcher["labelSelector"] = json!(format!("tier=t{i}"));
            watcher["replayExisting"] = json!(true);
            h.start(&format!("t{i}"), "resource-watcher", watcher, false)
        })
        .collect();
    for (i, trigger) in running.iter_mut().enumerate() {
        let mut seen = summary(&trigger.collect(2).await);
        seen.sort();
        assert_eq!(seen, [pair("create", &format!("cm-{i}-a")), pair("create", &format!("cm-{i}-b"))], "t{i}");
    }
    if let (Some(cluster), Some(before)) = (h._cluster.as_ref(), requests_before) {
        cluster.faults().clear_delay("configmaps");
        let lists = configmap_lists_since(cluster, before);
        // The watch's own list, then one list for the catch-ups of all the triggers that joined
        // while it ran (one more at most for a trigger that joined during that one), rather
        // than one list per trigger, each holding up the next.
        assert!(lists <= 3, "{TRIGGERS} triggers caught up with {lists} lists");
    }
    for trigger in running {
        trigger.stop().await;
    }
    h.clean_up().await;
}

#[tokio::test]
async fn a_first_start_on_a_synced_watch_records_what_the_watch_knows_without_a_list() {
    let h = harness("first").await;
    h.create_labelled("gold-1", "gold").await;
    h.create_labelled("gold-2", "gold").await;
    h.create_labelled("silver", "silver").await;
    // Another trigger has the shared watch open and synced.
    let all = h.start("all", "resource-watcher", h.cm_watcher(&["update"]), false);
    h.wait_for("all", "the three objects recorded", |stored| stored.len() == 3).await;
    let requests_before = h._cluster.as_ref().map(|cluster| cluster.requests().len());

    let mut gold = h.cm_watcher(&["update"]);
    gold["labelSelector"] = json!("tier=gold");
    let running = h.start("gold", "resource-watcher", gold.clone(), false);
    let (one, two) = (h.uid_of("gold-1").await, h.uid_of("gold-2").await);
    let version = h.configmaps().get("gold-1").await.unwrap().metadata.resource_version.unwrap();
    h.wait_for("gold", "the two gold objects recorded at their resourceVersion", |stored| {
        stored.keys().cloned().collect::<BTreeSet<_>>() == BTreeSet::from([one.clone(), two.clone()])
            && stored[&one]["rv"] == version.as_str()
    })
    .await;
    if let (Some(cluster), Some(before)) = (h._cluster.as_ref(), requests_before) {
        let lists = configmap_lists_since(cluster, before);
        assert_eq!(lists, 0, "the first start made {lists} list(s) of its own");
    }
    running.stop().await;

    // The index so recorded is what the next start compares with.
    h.set_data("gold-1", "2").await;
    h.set_data("silver", "2").await;
    let mut running = h.start("gold", "resource-watcher", gold, false);
    assert_eq!(summary(&running.collect(1).await), [pair("update", "gold-1")]);
    running.stop().await;
    all.stop().await;
    h.clean_up().await;
}
