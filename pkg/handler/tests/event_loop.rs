//! Event loops end to end, against the project's test cluster, or a real cluster when
//! `KTRIGGER_TEST_KUBECONFIG` names a kubeconfig (each test then works in a namespace of its own
//! and deletes it; the tests that need fault injection skip that part).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::ConfigMap;
use ktrigger_handler::{Context, DefaultHandler, Error, EventHandler, EventLoop, HandlerError, Metrics, Watch};
use ktrigger_kube::{Cluster, HubOptions, IdentityPolicy};
use ktrigger_testcluster::TestTarget;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

/// The label of the ConfigMaps tests create: a real cluster adds ConfigMaps of its own
/// (`kube-root-ca.crt`) to every namespace.
const OURS: &str = "ktrigger-test=handler";

/// The test's own ConfigMaps.
fn ours(env: &Env) -> Watch<ConfigMap> {
    Watch::<ConfigMap>::new().namespace(&env.namespace).labels(OURS)
}

/// A cluster and a namespace of the test's own.
struct Env(TestTarget);

impl std::ops::Deref for Env {
    type Target = TestTarget;

    fn deref(&self) -> &TestTarget {
        &self.0
    }
}

impl Env {
    async fn new(test: &str) -> Env {
        ktrigger_kube::ensure_crypto_provider();
        Env(TestTarget::start(&format!("kt-handler-{test}")).await)
    }

    fn configmaps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Creates a ConfigMap labelled [`OURS`] and `labels`.
    async fn create(&self, name: &str, value: &str, mut labels: serde_json::Value) {
        labels["ktrigger-test"] = json!("handler");
        let body = json!({"metadata": {"name": name, "labels": labels}, "data": {"value": value}});
        self.configmaps().create(&PostParams::default(), &serde_json::from_value(body).unwrap()).await.unwrap();
    }

    fn cluster(&self) -> Cluster {
        Cluster::with_client(self.client.clone(), IdentityPolicy::local(), HubOptions::default(), Vec::new())
    }

    async fn finish(self) {
        self.0.finish().await;
    }
}

/// What a handler saw: (callback, name, old value, new value).
type Seen = (&'static str, String, Option<String>, String);

/// Records every callback, and how many changes the loop had queued at its first one.
struct Recorder {
    seen: Mutex<Vec<Seen>>,
    metrics: Metrics,
    adds_at_first_call: Mutex<Option<String>>,
}

/// A shared [`Recorder`], registered as the handler.
#[derive(Clone)]
struct Handle(Arc<Recorder>);

impl std::ops::Deref for Handle {
    type Target = Recorder;

    fn deref(&self) -> &Recorder {
        &self.0
    }
}

impl Handle {
    fn new(metrics: &Metrics) -> Handle {
        Handle(Arc::new(Recorder {
            seen: Mutex::default(),
            metrics: metrics.clone(),
            adds_at_first_call: Mutex::default(),
        }))
    }
}

impl Recorder {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn record(&self, kind: &'static str, name: &str, old: Option<&ConfigMap>, new: &ConfigMap) {
        let mut first = self.adds_at_first_call.lock().unwrap();
        if first.is_none() {
            *first = Some(metric(&self.metrics, "ktrigger_handler_adds_total"));
        }
        self.seen.lock().unwrap().push((kind, name.to_string(), old.map(value), value(new)));
    }
}

fn value(configmap: &ConfigMap) -> String {
    configmap.data.as_ref().and_then(|d| d.get("value")).cloned().unwrap_or_default()
}

fn metric(metrics: &Metrics, name: &str) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text.lines().find(|line| line.starts_with(name)).unwrap_or_default().to_string()
}

#[async_trait]
impl EventHandler<ConfigMap> for Handle {
    fn name(&self) -> &str {
        "recorder"
    }

    async fn add(&self, _: &Context, _: Option<&str>, name: &str, object: &ConfigMap) -> Result<(), Error> {
        self.record("add", name, None, object);
        Ok(())
    }

    async fn update(
        &self,
        _: &Context,
        _: Option<&str>,
        name: &str,
        old: Option<&ConfigMap>,
        new: &ConfigMap,
    ) -> Result<(), Error> {
        self.record("update", name, old, new);
        Ok(())
    }

    async fn delete(&self, _: &Context, _: Option<&str>, name: &str, object: &ConfigMap) -> Result<(), Error> {
        self.record("delete", name, None, object);
        Ok(())
    }
}

async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn start(event_loop: EventLoop, threadiness: usize) -> (CancellationToken, JoinHandle<Result<(), HandlerError>>) {
    let cancel = CancellationToken::new();
    (cancel.clone(), tokio::spawn(event_loop.run(cancel, threadiness)))
}

async fn stop(cancel: CancellationToken, running: JoinHandle<Result<(), HandlerError>>) {
    cancel.cancel();
    tokio::time::timeout(WAIT, running).await.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_objects_come_first_then_adds_updates_and_deletes_with_old_states() {
    let env = Env::new("changes").await;
    for i in 0..5 {
        env.create(&format!("existing-{i}"), "v0", json!({})).await;
    }
    if let Some(cluster) = &env.test_cluster {
        // A slow first list: workers must still wait for it.
        cluster.faults().delay("configmaps", Duration::from_millis(500));
    }
    let metrics = Metrics::new();
    let recorder = Handle::new(&metrics);
    let mut event_loop = EventLoop::new("changes", env.client.clone()).metrics(&metrics);
    event_loop.register(recorder.clone(), ours(&env)).unwrap();
    let (cancel, running) = start(event_loop, 4);

    wait_until("the existing objects", || recorder.seen().len() == 5).await;
    if let Some(cluster) = &env.test_cluster {
        cluster.faults().clear_delay("configmaps");
    }
    let adds = recorder.adds_at_first_call.lock().unwrap().clone().unwrap();
    assert_eq!(
        adds, r#"ktrigger_handler_adds_total{loop="changes"} 5"#,
        "every existing object queued before any worker ran"
    );
    assert!(recorder.seen().iter().all(|(kind, _, _, value)| *kind == "add" && value == "v0"));

    env.create("later", "v0", json!({})).await;
    let patch = json!({"data": {"value": "v1"}});
    env.configmaps().patch("existing-0", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    env.configmaps().delete("existing-1", &DeleteParams::default()).await.unwrap();
    wait_until("the live changes", || recorder.seen().len() == 8).await;
    let live: BTreeMap<String, Seen> = recorder.seen()[5..].iter().map(|s| (s.1.clone(), s.clone())).collect();
    assert_eq!(live["later"], ("add", "later".into(), None, "v0".into()));
    assert_eq!(live["existing-0"], ("update", "existing-0".into(), Some("v0".into()), "v1".into()));
    assert_eq!(live["existing-1"], ("delete", "existing-1".into(), None, "v0".into()));

    stop(cancel, running).await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_selector_limits_what_a_handler_sees() {
    let env = Env::new("labels").await;
    env.create("web", "v0", json!({"tier": "web"})).await;
    env.create("db", "v0", json!({"tier": "db"})).await;
    let metrics = Metrics::new();
    let recorder = Handle::new(&metrics);
    let mut event_loop = EventLoop::new("labels", env.client.clone());
    let watch = Watch::<ConfigMap>::new().namespace(&env.namespace).labels("tier in (web, cache)");
    event_loop.register(recorder.clone(), watch).unwrap();
    let (cancel, running) = start(event_loop, 2);
    env.create("cache", "v0", json!({"tier": "cache"})).await;
    env.create("other", "v0", json!({"tier": "other"})).await;
    wait_until("the matching objects", || recorder.seen().len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut names: Vec<String> = recorder.seen().into_iter().map(|s| s.1).collect();
    names.sort();
    assert_eq!(names, ["cache", "web"]);
    stop(cancel, running).await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loops_on_one_cluster_share_its_watches() {
    let env = Env::new("sharing").await;
    env.create("shared", "v0", json!({})).await;
    let cluster = env.cluster();
    let (first, second) = (Handle::new(&Metrics::new()), Handle::new(&Metrics::new()));
    let mut running = Vec::new();
    for (name, recorder) in [("first", &first), ("second", &second)] {
        let mut event_loop = EventLoop::on_cluster(name, &cluster).unwrap();
        event_loop.register(recorder.clone(), ours(&env)).unwrap();
        running.push(start(event_loop, 1));
    }
    wait_until("both loops saw the object", || first.seen().len() == 1 && second.seen().len() == 1).await;
    assert_eq!(cluster.hub().open_watches(), 1, "one watch serves both loops");
    assert_eq!(cluster.hub().watches_opened(), 1);
    for (cancel, task) in running {
        stop(cancel, task).await;
    }
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_watch_fails_the_run_naming_the_loop_handler_and_resource() {
    let env = Env::new("refused").await;
    let Some(cluster) = &env.test_cluster else {
        eprintln!(
            "skipped: refusing a list needs the test cluster's fault injection (KTRIGGER_TEST_KUBECONFIG is set)"
        );
        env.finish().await;
        return;
    };
    cluster.faults().forbid("list", "configmaps");
    let mut event_loop = EventLoop::new("refused", env.client.clone());
    event_loop
        .register(DefaultHandler::<ConfigMap>::new("quiet"), Watch::<ConfigMap>::new().namespace(&env.namespace))
        .unwrap();
    let error = tokio::time::timeout(WAIT, event_loop.run(CancellationToken::new(), 2)).await.unwrap().unwrap_err();
    let text = error.to_string();
    assert!(
        text.starts_with(&format!(
            "event loop refused, handler quiet: watch of v1/configmaps in namespace {}: ",
            env.namespace
        )),
        "{text}"
    );
    assert_eq!(error.label(), "watch");
    env.finish().await;
}
