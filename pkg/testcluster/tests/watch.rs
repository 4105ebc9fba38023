//! Watches behave like the API server's: kube-runtime's watcher sees every change, resumes after
//! its stream ends, relists after 410 Gone; raw watches replay from a resourceVersion, send
//! bookmarks, follow selectors, time out and support streaming lists.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use ktrigger_testcluster::{Config, TestCluster};
use kube::api::{Api, DeleteParams, PartialObjectMeta, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

fn configmap(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
}

fn name(cm: &ConfigMap) -> &str {
    cm.metadata.name.as_deref().unwrap_or_default()
}

type Events = tokio::sync::mpsc::UnboundedReceiver<Result<Event<ConfigMap>, watcher::Error>>;

/// Runs kube-runtime's watcher in its own task, as a controller would, and hands over its events.
fn watch_configmaps(api: Api<ConfigMap>, config: watcher::Config) -> Events {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = watcher::watcher(api, config).default_backoff().boxed();
        while let Some(event) = stream.next().await {
            if tx.send(event).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for the first event the predicate accepts; errors from the watcher are skipped, as a
/// controller's retrying loop would.
async fn wait_for(events: &mut Events, what: &str, mut accept: impl FnMut(&Event<ConfigMap>) -> bool) {
    let found = tokio::time::timeout(WAIT, async {
        while let Some(event) = events.recv().await {
            if let Ok(event) = event
                && accept(&event)
            {
                return;
            }
        }
        panic!("the watcher stream ended while waiting for {what}");
    })
    .await;
    assert!(found.is_ok(), "timed out waiting for {what}");
}

fn is_applied(event: &Event<ConfigMap>, wanted: &str) -> bool {
    matches!(event, Event::Apply(cm) | Event::InitApply(cm) if name(cm) == wanted)
}

fn list_requests(cluster: &TestCluster) -> usize {
    cluster
        .request_log()
        .iter()
        .filter(|(m, uri)| {
            m == "GET" && uri.starts_with("/api/v1/namespaces/default/configmaps?") && !uri.contains("watch=true")
        })
        .count()
}

async fn next_raw(
    stream: &mut BoxStream<'static, kube::Result<WatchEvent<ConfigMap>>>,
) -> Option<WatchEvent<ConfigMap>> {
    tokio::time::timeout(WAIT, stream.next()).await.expect("a watch event in time").map(|e| e.unwrap())
}

async fn raw_watch(
    api: &Api<ConfigMap>,
    params: &WatchParams,
    rv: &str,
) -> BoxStream<'static, kube::Result<WatchEvent<ConfigMap>>> {
    api.watch(params, rv).await.unwrap().boxed()
}

#[tokio::test]
async fn the_watcher_sees_configmaps_applied_and_deleted() {
    let cluster = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client().await, "default");
    api.create(&PostParams::default(), &configmap("before", &[])).await.unwrap();
    let mut events = watch_configmaps(api.clone(), watcher::Config::default());
    wait_for(&mut events, "the initial object", |e| is_applied(e, "before")).await;
    wait_for(&mut events, "the end of the initial list", |e| matches!(e, Event::InitDone)).await;

    api.create(&PostParams::default(), &configmap("a", &[])).await.unwrap();
    wait_for(&mut events, "a created", |e| is_applied(e, "a")).await;
    api.patch("a", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "v"}}))).await.unwrap();
    wait_for(
        &mut events,
        "a modified",
        |e| matches!(e, Event::Apply(cm) if name(cm) == "a" && cm.data.as_ref().is_some_and(|d| d["k"] == "v")),
    )
    .await;
    api.delete("a", &DeleteParams::default()).await.unwrap();
    wait_for(&mut events, "a deleted", |e| matches!(e, Event::Delete(cm) if name(cm) == "a")).await;
}

#[tokio::test]
async fn the_watcher_resumes_without_relisting_after_its_watch_is_dropped() {
    let cluster = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client().await, "default");
    let mut events = watch_configmaps(api.clone(), watcher::Config::default());
    wait_for(&mut events, "the end of the initial list", |e| matches!(e, Event::InitDone)).await;
    assert!(cluster.wait_for_watches("configmaps", 1, WAIT).await);

    cluster.faults().drop_watches("configmaps");
    // Created while no watch may be open: the next watch replays it from the change log.
    api.create(&PostParams::default(), &configmap("during-the-gap", &[])).await.unwrap();
    wait_for(&mut events, "the object created across the reconnect", |e| is_applied(e, "during-the-gap")).await;

    api.delete("during-the-gap", &DeleteParams::default()).await.unwrap();
    wait_for(&mut events, "its deletion", |e| matches!(e, Event::Delete(cm) if name(cm) == "during-the-gap")).await;
    assert!(cluster.watch_requests_for("configmaps") >= 2);
    assert_eq!(list_requests(&cluster), 1, "a dropped watch resumes from its resourceVersion, without a new list");
}

#[tokio::test]
async fn the_watcher_relists_after_a_410_gone_and_continues() {
    let cluster = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client().await, "default");
    api.create(&PostParams::default(), &configmap("old", &[])).await.unwrap();
    let mut events = watch_configmaps(api.clone(), watcher::Config::default());
    wait_for(&mut events, "the end of the initial list", |e| matches!(e, Event::InitDone)).await;
    assert!(cluster.wait_for_watches("configmaps", 1, WAIT).await);

    cluster.faults().gone_on_next_watch("configmaps");
    cluster.faults().drop_watches("configmaps");
    wait_for(&mut events, "the relist", |e| is_applied(e, "old")).await;
    wait_for(&mut events, "the end of the relist", |e| matches!(e, Event::InitDone)).await;
    assert_eq!(list_requests(&cluster), 2);

    api.create(&PostParams::default(), &configmap("new", &[])).await.unwrap();
    wait_for(&mut events, "an object created after the relist", |e| is_applied(e, "new")).await;
}

#[tokio::test]
async fn a_watch_from_a_resource_version_older_than_the_log_gets_410() {
    let cluster = TestCluster::start_with(Config { event_log_capacity: 3, ..Config::default() }).await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client().await, "default");
    let start = cluster.resource_version().to_string();
    for i in 0..5 {
        api.create(&PostParams::default(), &configmap(&format!("c{i}"), &[])).await.unwrap();
    }
    let mut stream = raw_watch(&api, &WatchParams::default(), &start).await;
    match next_raw(&mut stream).await {
        Some(WatchEvent::Error(status)) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    assert!(next_raw(&mut stream).await.is_none(), "the stream ends after the error");

    let recent = (cluster.resource_version() - 2).to_string();
    let mut stream = raw_watch(&api, &WatchParams::default(), &recent).await;
    assert!(matches!(next_raw(&mut stream).await, Some(WatchEvent::Added(cm)) if name(&cm) == "c3"));
}

#[tokio::test]
async fn a_watch_replays_the_changes_since_its_resource_version_in_order() {
    let cluster = TestCluster::start().await;
    let client = cluster.client().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let elsewhere: Api<ConfigMap> = Api::namespaced(client, "elsewhere");
    let start = cluster.resource_version().to_string();
    api.create(&PostParams::default(), &configmap("r", &[])).await.unwrap();
    elsewhere.create(&PostParams::default(), &configmap("not-mine", &[])).await.unwrap();
    api.patch("r", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "v"}}))).await.unwrap();
    api.delete("r", &DeleteParams::default()).await.unwrap();

    let mut stream = raw_watch(&api, &WatchParams::default().disable_bookmarks(), &start).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (kind, cm) = match next_raw(&mut stream).await.unwrap() {
            WatchEvent::Added(cm) => ("ADDED", cm),
            WatchEvent::Modified(cm) => ("MODIFIED", cm),
            WatchEvent::Deleted(cm) => ("DELETED", cm),
            other => panic!("unexpected {other:?}"),
        };
        seen.push((kind, name(&cm).to_string(), cm.metadata.resource_version.unwrap().parse::<u64>().unwrap()));
    }
    let kinds: Vec<_> = seen.iter().map(|(k, n, _)| (*k, n.as_str())).collect();
    assert_eq!(kinds, [("ADDED", "r"), ("MODIFIED", "r"), ("DELETED", "r")]);
    assert!(seen.windows(2).all(|w| w[0].2 < w[1].2), "resourceVersions increase: {seen:?}");
}

#[tokio::test]
async fn watches_that_allow_bookmarks_receive_them() {
    let cluster =
        TestCluster::start_with(Config { bookmark_interval: Duration::from_millis(50), ..Config::default() }).await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client().await, "default");
    let now = cluster.resource_version().to_string();
    let mut stream = raw_watch(&api, &WatchParams { bookmarks: true, ..WatchParams::default() }, &now).await;
    match next_raw(&mut stream).await {
        Some(WatchEvent::Bookmark(bookmark)) => assert_eq!(bookmark.metadata.resource_version, now),
        other => panic!("expected a bookmark, got {other:?}"),
    }

    let mut quiet = raw_watch(&api, &WatchParams::default().disable_bookmarks(), &now).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), quiet.next()).await.is_err(),
        "no bookmarks unless allowed"
    );
}

#[tokio::test]
async fn objects_entering_and_leaving_a_label_selection_are_added_and_deleted() {
    let cluster = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client().await, "default");
    let now = cluster.resource_version().to_string();
    let mut stream = raw_watch(&api, &WatchParams::default().labels("app=web").disable_bookmarks(), &now).await;

    api.create(&PostParams::default(), &configmap("x", &[("app", "db")])).await.unwrap();
    let relabel = |app: &str| Patch::Merge(json!({"metadata": {"labels": {"app": app}}}));
    api.patch("x", &PatchParams::default(), &relabel("web")).await.unwrap();
    assert!(matches!(next_raw(&mut stream).await, Some(WatchEvent::Added(cm)) if name(&cm) == "x"));
    api.patch("x", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "v"}}))).await.unwrap();
    assert!(matches!(next_raw(&mut stream).await, Some(WatchEvent::Modified(cm)) if name(&cm) == "x"));
    api.patch("x", &PatchParams::default(), &relabel("db")).await.unwrap();
    assert!(matches!(next_raw(&mut stream).await, Some(WatchEvent::Deleted(cm)) if name(&cm) == "x"));
}

#[tokio::test]
async fn a_watch_ends_after_its_timeout() {
    let cluster = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client().await, "default");
    let now = cluster.resource_version().to_string();
    let started = std::time::Instant::now();
    let stream = raw_watch(&api, &WatchParams::default().timeout(1).disable_bookmarks(), &now).await;
    let events: Vec<_> = tokio::time::timeout(WAIT, stream.try_collect::<Vec<_>>()).await.unwrap().unwrap();
    assert!(events.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn streaming_lists_send_the_initial_objects_then_a_bookmark() {
    let cluster = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client().await, "default");
    api.create(&PostParams::default(), &configmap("existing", &[])).await.unwrap();
    let mut events = watch_configmaps(api.clone(), watcher::Config::default().streaming_lists());
    wait_for(&mut events, "the initial object", |e| matches!(e, Event::InitApply(cm) if name(cm) == "existing")).await;
    wait_for(&mut events, "the end of the initial events", |e| matches!(e, Event::InitDone)).await;
    api.create(&PostParams::default(), &configmap("later", &[])).await.unwrap();
    wait_for(&mut events, "a live object", |e| is_applied(e, "later")).await;
    assert!(cluster.request_log().iter().any(|(_, uri)| uri.contains("sendInitialEvents=true")));
    assert_eq!(list_requests(&cluster), 0);
}

#[tokio::test]
async fn metadata_watchers_see_changes() {
    let cluster = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client().await, "default");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let metadata: Api<PartialObjectMeta<ConfigMap>> = Api::namespaced(cluster.client().await, "default");
    tokio::spawn(async move {
        let mut stream = watcher::watcher(metadata, watcher::Config::default()).default_backoff().boxed();
        while let Some(Ok(event)) = stream.next().await {
            if let Event::Apply(meta) = event
                && tx.send(meta.metadata.name.unwrap_or_default()).is_err()
            {
                return;
            }
        }
    });
    assert!(cluster.wait_for_watches("configmaps", 1, WAIT).await);
    api.create(&PostParams::default(), &configmap("meta-only", &[])).await.unwrap();
    let seen = tokio::time::timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    assert_eq!(seen, "meta-only");
}
