//! Each injected fault does what it says, to the resource it names, as often as it says.

use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use ktrigger_testcluster::TestCluster;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Error};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

fn configmap(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
}

fn secret(name: &str) -> Secret {
    serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
}

fn code<T: std::fmt::Debug>(result: kube::Result<T>) -> u16 {
    match result {
        Err(Error::Api(status)) => status.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn setup() -> (TestCluster, Client, Api<ConfigMap>, Api<Secret>) {
    let cluster = TestCluster::start().await;
    let client = cluster.client().await;
    let configmaps = Api::namespaced(client.clone(), "default");
    let secrets = Api::namespaced(client.clone(), "default");
    (cluster, client, configmaps, secrets)
}

type Raw<K> = BoxStream<'static, kube::Result<WatchEvent<K>>>;

async fn watch_from_now<K>(cluster: &TestCluster, api: &Api<K>) -> Raw<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let now = cluster.resource_version().to_string();
    api.watch(&WatchParams::default().disable_bookmarks(), &now).await.unwrap().boxed()
}

async fn next<K>(stream: &mut Raw<K>) -> Option<WatchEvent<K>> {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("an event or the end of the stream in time")
        .map(|e| e.unwrap())
}

#[tokio::test]
async fn gone_on_next_watch_answers_exactly_one_watch_with_410() {
    let (cluster, _, configmaps, _) = setup().await;
    cluster.faults().gone_on_next_watch("configmaps");

    let mut first = watch_from_now(&cluster, &configmaps).await;
    assert!(matches!(next(&mut first).await, Some(WatchEvent::Error(e)) if e.code == 410 && e.reason == "Expired"));
    assert!(next(&mut first).await.is_none());

    let mut second = watch_from_now(&cluster, &configmaps).await;
    configmaps.create(&PostParams::default(), &configmap("after")).await.unwrap();
    assert!(matches!(next(&mut second).await, Some(WatchEvent::Added(_))));
    assert_eq!(cluster.watch_requests_for("configmaps"), 2);
    assert_eq!(cluster.watch_requests(), 2);
}

#[tokio::test]
async fn drop_watches_closes_the_open_streams_of_that_resource_only() {
    let (cluster, _, configmaps, secrets) = setup().await;
    let mut cm_a = watch_from_now(&cluster, &configmaps).await;
    let mut cm_b = watch_from_now(&cluster, &configmaps).await;
    let mut secret_watch = watch_from_now(&cluster, &secrets).await;
    assert!(cluster.wait_for_watches("configmaps", 2, WAIT).await);
    assert!(cluster.wait_for_watches("secrets", 1, WAIT).await);

    cluster.faults().drop_watches("configmaps");
    assert!(next(&mut cm_a).await.is_none());
    assert!(next(&mut cm_b).await.is_none());
    secrets.create(&PostParams::default(), &secret("still-watched")).await.unwrap();
    assert!(matches!(next(&mut secret_watch).await,
                 Some(WatchEvent::Added(s)) if s.metadata.name.as_deref() == Some("still-watched")));

    let mut reopened = watch_from_now(&cluster, &configmaps).await;
    configmaps.create(&PostParams::default(), &configmap("seen")).await.unwrap();
    assert!(matches!(next(&mut reopened).await, Some(WatchEvent::Added(_))), "a later watch is not affected");
}

#[tokio::test]
async fn conflict_on_next_write_fails_one_update_or_patch() {
    let (cluster, _, configmaps, _) = setup().await;
    let created = configmaps.create(&PostParams::default(), &configmap("c")).await.unwrap();
    let patch = Patch::Merge(json!({"data": {"k": "v"}}));

    cluster.faults().conflict_on_next_write("configmaps");
    configmaps.create(&PostParams::default(), &configmap("creates-are-not-writes")).await.unwrap();
    assert_eq!(code(configmaps.replace("c", &PostParams::default(), &created).await), 409);
    configmaps.replace("c", &PostParams::default(), &created).await.unwrap();

    cluster.faults().conflict_on_next_write("configmaps");
    assert_eq!(code(configmaps.patch("c", &PatchParams::default(), &patch).await), 409);
    configmaps.patch("c", &PatchParams::default(), &patch).await.unwrap();
}

#[tokio::test]
async fn fail_next_fails_that_many_requests_with_500() {
    let (cluster, _, configmaps, secrets) = setup().await;
    configmaps.create(&PostParams::default(), &configmap("f")).await.unwrap();

    cluster.faults().fail_next(2, "configmaps");
    secrets.list(&ListParams::default()).await.unwrap();
    assert_eq!(code(configmaps.get("f").await), 500);
    assert_eq!(code(configmaps.list(&ListParams::default()).await), 500);
    configmaps.get("f").await.unwrap();
}

#[tokio::test]
async fn a_watcher_recovers_from_failed_lists() {
    let (cluster, _, configmaps, _) = setup().await;
    configmaps.create(&PostParams::default(), &configmap("survivor")).await.unwrap();
    cluster.faults().fail_next(1, "configmaps");
    let mut events = watcher::watcher(configmaps, watcher::Config::default()).default_backoff().boxed();
    let mut saw_error = false;
    let done = tokio::time::timeout(WAIT, async {
        while let Some(event) = events.next().await {
            match event {
                Err(_) => saw_error = true,
                Ok(Event::InitApply(cm)) => assert_eq!(cm.metadata.name.as_deref(), Some("survivor")),
                Ok(Event::InitDone) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(done.is_ok() && saw_error);
}

#[tokio::test]
async fn delay_slows_every_request_on_the_resource_until_cleared() {
    let (cluster, _, configmaps, secrets) = setup().await;
    cluster.faults().delay("configmaps", Duration::from_millis(300));
    for _ in 0..2 {
        let started = Instant::now();
        configmaps.list(&ListParams::default()).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
    let started = Instant::now();
    secrets.list(&ListParams::default()).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(300));

    cluster.faults().clear_delay("configmaps");
    let started = Instant::now();
    configmaps.list(&ListParams::default()).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(300));
}

#[tokio::test]
async fn forbid_denies_a_verb_until_allowed() {
    let (cluster, _, configmaps, secrets) = setup().await;
    configmaps.create(&PostParams::default(), &configmap("x")).await.unwrap();
    cluster.faults().forbid("list", "configmaps");
    for _ in 0..2 {
        match configmaps.list(&ListParams::default()).await {
            Err(Error::Api(status)) => assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden")),
            other => panic!("expected 403, got {other:?}"),
        }
    }
    configmaps.get("x").await.unwrap();
    cluster.faults().allow("list", "configmaps");
    configmaps.list(&ListParams::default()).await.unwrap();

    cluster.faults().forbid("*", "secrets");
    assert_eq!(code(secrets.create(&PostParams::default(), &secret("s")).await), 403);
    assert_eq!(code(secrets.get("s").await), 403);
}

#[tokio::test]
async fn clear_removes_every_pending_fault() {
    let (cluster, _, configmaps, _) = setup().await;
    let faults = cluster.faults();
    faults.fail_next(5, "*");
    faults.forbid("*", "configmaps");
    faults.delay("configmaps", Duration::from_secs(5));
    faults.conflict_on_next_write("configmaps");
    faults.gone_on_next_watch("configmaps");
    faults.clear();

    let created = configmaps.create(&PostParams::default(), &configmap("ok")).await.unwrap();
    configmaps.replace("ok", &PostParams::default(), &created).await.unwrap();
    let mut stream = watch_from_now(&cluster, &configmaps).await;
    configmaps.create(&PostParams::default(), &configmap("ok2")).await.unwrap();
    assert!(matches!(next(&mut stream).await, Some(WatchEvent::Added(_))));
}
