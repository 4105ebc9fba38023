//! The event loop driven by fake watches: sync before start, per-key serialisation,
//! coalescing, retries and shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ktrigger_core::{Event, EventSink};
use ktrigger_kube::hub::Health;
use kube::api::{ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::event_loop::Feed;
use crate::{Context, DefaultHandler, Error, EventHandler, EventLoop, HandlerError, Metrics, Watch};

const WAIT: Duration = Duration::from_secs(10);

/// One callback as a handler saw it.
#[derive(Debug, Clone, PartialEq)]
struct Call {
    kind: &'static str,
    name: String,
    old: Option<u64>,
    new: u64,
    at: Instant,
}

fn n(object: &DynamicObject) -> u64 {
    object.data["data"]["n"].as_u64().unwrap_or(0)
}

/// Records calls; sleeps `work` in each; fails the first `failures` calls of each object;
/// panics instead when `panics`.
#[derive(Default)]
struct Recorder {
    name: &'static str,
    calls: Mutex<Vec<Call>>,
    work: Duration,
    failures: usize,
    panics: bool,
    attempts: Mutex<HashMap<String, usize>>,
    in_flight: Mutex<HashMap<String, usize>>,
    most_per_key: AtomicUsize,
    running: AtomicUsize,
    most_running: AtomicUsize,
    finished: AtomicUsize,
    saw_cancel: AtomicBool,
}

impl Recorder {
    fn new(name: &'static str) -> Self {
        Recorder { name, ..Recorder::default() }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    async fn record(&self, ctx: &Context, call: Call) -> Result<(), Error> {
        let name = call.name.clone();
        let per_key = {
            let mut in_flight = self.in_flight.lock().unwrap();
            let count = in_flight.entry(name.clone()).or_default();
            *count += 1;
            *count
        };
        self.most_per_key.fetch_max(per_key, Ordering::SeqCst);
        let running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_running.fetch_max(running, Ordering::SeqCst);
        self.calls.lock().unwrap().push(call);
        tokio::select! {
            () = tokio::time::sleep(self.work) => {}
            () = ctx.cancellation().cancelled() => self.saw_cancel.store(true, Ordering::SeqCst),
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        *self.in_flight.lock().unwrap().get_mut(&name).unwrap() -= 1;
        let attempt = {
            let mut attempts = self.attempts.lock().unwrap();
            let attempt = attempts.entry(name).or_default();
            *attempt += 1;
            *attempt
        };
        self.finished.fetch_add(1, Ordering::SeqCst);
        if attempt <= self.failures {
            if self.panics {
                panic!("attempt {attempt} fails");
            }
            return Err(format!("attempt {attempt} fails").into());
        }
        Ok(())
    }
}

#[async_trait]
impl EventHandler<DynamicObject> for Arc<Recorder> {
    fn name(&self) -> &str {
        self.name
    }

    async fn add(&self, ctx: &Context, _: Option<&str>, name: &str, object: &DynamicObject) -> Result<(), Error> {
        let call = Call { kind: "add", name: name.into(), old: None, new: n(object), at: Instant::now() };
        self.record(ctx, call).await
    }

    async fn update(
        &self,
        ctx: &Context,
        _: Option<&str>,
        name: &str,
        old: Option<&DynamicObject>,
        new: &DynamicObject,
    ) -> Result<(), Error> {
        let call = Call { kind: "update", name: name.into(), old: old.map(n), new: n(new), at: Instant::now() };
        self.record(ctx, call).await
    }

    async fn delete(&self, ctx: &Context, _: Option<&str>, name: &str, object: &DynamicObject) -> Result<(), Error> {
        let call = Call { kind: "delete", name: name.into(), old: None, new: n(object), at: Instant::now() };
        self.record(ctx, call).await
    }
}

fn object(name: &str, value: u64) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "ns"}, "data": {"n": value}})
}

/// A fake watch: what the loop reads, and the ends a test drives.
struct FakeWatch {
    sink: EventSink,
    health: watch::Sender<Health>,
}

impl FakeWatch {
    fn new(synced: bool) -> (FakeWatch, Feed) {
        let (sink, events) = EventSink::channel(1024);
        let (health, receiver) = watch::channel(Health { synced, ..Health::default() });
        (FakeWatch { sink, health }, Feed { events, health: receiver, subscription: None })
    }

    async fn add(&self, name: &str, value: u64) {
        assert!(self.sink.send(Event::new("event-loop", "create", object(name, value))).await);
    }

    async fn update(&self, name: &str, old: u64, new: u64) {
        let mut event = Event::new("event-loop", "update", object(name, new));
        event.old_object = Some(object(name, old));
        assert!(self.sink.send(event).await);
    }

    fn sync(&self) {
        self.health.send_modify(|h| h.synced = true);
    }
}

fn client() -> kube::Client {
    ktrigger_kube::ensure_crypto_provider();
    let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

fn configmaps() -> Watch<DynamicObject> {
    Watch::dynamic(ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", "ConfigMap")))
}

fn event_loop(handlers: &[&Arc<Recorder>], metrics: &Metrics) -> EventLoop {
    let mut event_loop = EventLoop::new("test", client())
        .metrics(metrics)
        .retry_backoff(Duration::from_millis(50), Duration::from_secs(1), 4)
        .shutdown_grace(Duration::from_secs(5));
    for handler in handlers {
        event_loop.register(Arc::clone(handler), configmaps()).unwrap();
    }
    event_loop
}

async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn counter(metrics: &Metrics, name: &str) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text.lines().find(|line| line.starts_with(name)).unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_start_only_once_every_watch_has_synced() {
    let (first, second) = (Arc::new(Recorder::new("first")), Arc::new(Recorder::new("second")));
    let (synced, synced_feed) = FakeWatch::new(true);
    let (listing, listing_feed) = FakeWatch::new(false);
    let cancel = CancellationToken::new();
    let running = tokio::spawn(event_loop(&[&first, &second], &Metrics::new()).drive(
        vec![synced_feed, listing_feed],
        cancel.clone(),
        4,
    ));
    for i in 0..20 {
        synced.add(&format!("a{i}"), i).await;
        listing.add(&format!("b{i}"), i).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(first.calls().len() + second.calls().len(), 0, "no worker runs before the second watch has synced");
    let synced_at = Instant::now();
    listing.sync();
    wait_until("every existing object handled", || first.calls().len() == 20 && second.calls().len() == 20).await;
    assert!(first.calls().iter().chain(&second.calls()).all(|c| c.at >= synced_at && c.kind == "add"));
    cancel.cancel();
    running.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_object_is_handled_by_one_worker_at_a_time_while_others_run_in_parallel() {
    let recorder = Arc::new(Recorder { work: Duration::from_millis(20), ..Recorder::new("serial") });
    let (fake, feed) = FakeWatch::new(true);
    let cancel = CancellationToken::new();
    let running = tokio::spawn(event_loop(&[&recorder], &Metrics::new()).drive(vec![feed], cancel.clone(), 8));
    for name in ["a", "b", "c", "d"] {
        fake.add(name, 0).await;
    }
    for round in 1..=15u64 {
        for name in ["a", "b", "c", "d"] {
            fake.update(name, round - 1, round).await;
        }
        tokio::time::sleep(Duration::from_millis(7)).await;
    }
    let last = |name: &str| recorder.calls().iter().rev().find(|c| c.name == name).map(|c| c.new);
    wait_until("the last state of every object", || ["a", "b", "c", "d"].iter().all(|n| last(n) == Some(15))).await;
    assert_eq!(recorder.most_per_key.load(Ordering::SeqCst), 1, "never two workers on one object");
    assert!(recorder.most_running.load(Ordering::SeqCst) > 1, "different objects are handled in parallel");
    cancel.cancel();
    running.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_while_an_object_waits_are_handled_once_with_the_latest_state() {
    let recorder = Arc::new(Recorder::new("coalesce"));
    let metrics = Metrics::new();
    let (fake, feed) = FakeWatch::new(false);
    let cancel = CancellationToken::new();
    let running = tokio::spawn(event_loop(&[&recorder], &metrics).drive(vec![feed], cancel.clone(), 2));
    fake.add("a", 1).await;
    fake.update("a", 1, 2).await;
    fake.update("a", 2, 3).await;
    fake.add("b", 1).await;
    wait_until("four changes queued", || {
        counter(&metrics, "ktrigger_handler_adds_total") == r#"ktrigger_handler_adds_total{loop="test"} 4"#
    })
    .await;
    fake.sync();
    wait_until("both objects handled", || recorder.calls().len() == 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut calls: Vec<(&str, String, u64)> = recorder.calls().into_iter().map(|c| (c.kind, c.name, c.new)).collect();
    calls.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(calls, [("add", "a".into(), 3), ("add", "b".into(), 1)]);

    fake.update("a", 3, 4).await;
    fake.update("a", 4, 5).await;
    wait_until("the update handled", || recorder.calls().len() >= 3).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let updates: Vec<(Option<u64>, u64)> =
        recorder.calls().iter().filter(|c| c.kind == "update").map(|c| (c.old, c.new)).collect();
    assert!(
        updates == [(Some(3), 5)] || updates == [(Some(3), 4), (Some(4), 5)],
        "each update is seen, or the two merged keeping the oldest old state: {updates:?}"
    );
    cancel.cancel();
    running.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_object_is_retried_with_a_growing_backoff_until_it_succeeds() {
    let recorder = Arc::new(Recorder { failures: 3, ..Recorder::new("flaky") });
    let metrics = Metrics::new();
    let (fake, feed) = FakeWatch::new(true);
    let cancel = CancellationToken::new();
    let running = tokio::spawn(event_loop(&[&recorder], &metrics).drive(vec![feed], cancel.clone(), 2));
    fake.add("a", 1).await;
    wait_until("the fourth attempt", || recorder.finished.load(Ordering::SeqCst) == 4).await;
    let times: Vec<Instant> = recorder.calls().iter().map(|c| c.at).collect();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // 50 ms doubling, plus up to as much jitter.
    for (gap, least) in gaps.iter().zip([50, 100, 200]) {
        assert!(*gap >= Duration::from_millis(least), "gaps {gaps:?}");
    }
    assert!(gaps[2] > gaps[0], "the backoff grows: {gaps:?}");
    assert_eq!(counter(&metrics, "ktrigger_handler_retries_total"), r#"ktrigger_handler_retries_total{loop="test"} 3"#);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(recorder.calls().len(), 4, "not retried after it succeeded");
    cancel.cancel();
    running.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_object_is_dropped_once_its_retries_are_used_up_and_others_go_on() {
    let recorder = Arc::new(Recorder { failures: usize::MAX, panics: true, ..Recorder::new("broken") });
    let metrics = Metrics::new();
    let (fake, feed) = FakeWatch::new(true);
    let cancel = CancellationToken::new();
    let event_loop =
        event_loop(&[&recorder], &metrics).retry_backoff(Duration::from_millis(10), Duration::from_millis(20), 2);
    let running = tokio::spawn(event_loop.drive(vec![feed], cancel.clone(), 2));
    fake.add("a", 1).await;
    wait_until("the change dropped", || counter(&metrics, "ktrigger_handler_dropped_total").ends_with(" 1")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(recorder.calls().len(), 3, "the first attempt and two retries");
    fake.add("b", 1).await;
    wait_until("another object still handled", || recorder.calls().iter().any(|c| c.name == "b")).await;
    cancel.cancel();
    running.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_callbacks_in_progress_finish() {
    let recorder = Arc::new(Recorder { work: Duration::from_millis(300), ..Recorder::new("slow") });
    let (fake, feed) = FakeWatch::new(true);
    let cancel = CancellationToken::new();
    let running = tokio::spawn(event_loop(&[&recorder], &Metrics::new()).drive(vec![feed], cancel.clone(), 1));
    fake.add("a", 1).await;
    fake.add("b", 1).await;
    wait_until("a callback running", || recorder.running.load(Ordering::SeqCst) == 1).await;
    cancel.cancel();
    tokio::time::timeout(WAIT, running).await.unwrap().unwrap().unwrap();
    assert_eq!(
        recorder.finished.load(Ordering::SeqCst),
        1,
        "the running callback finished, the waiting one never started"
    );
    assert!(!recorder.saw_cancel.load(Ordering::SeqCst), "within the grace, the context is not cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_abandons_callbacks_that_outlast_the_grace_and_tells_them() {
    let recorder = Arc::new(Recorder { work: Duration::from_secs(3600), ..Recorder::new("stuck") });
    let (fake, feed) = FakeWatch::new(true);
    let cancel = CancellationToken::new();
    let event_loop = event_loop(&[&recorder], &Metrics::new()).shutdown_grace(Duration::from_millis(100));
    let running = tokio::spawn(event_loop.drive(vec![feed], cancel.clone(), 1));
    fake.add("a", 1).await;
    wait_until("a callback running", || recorder.running.load(Ordering::SeqCst) == 1).await;
    cancel.cancel();
    tokio::time::timeout(WAIT, running).await.expect("run returns after the grace").unwrap().unwrap();
    wait_until("the callback told to stop", || recorder.saw_cancel.load(Ordering::SeqCst)).await;
}

#[tokio::test]
async fn a_watch_refused_before_it_synced_fails_the_run_naming_the_handler() {
    let recorder = Arc::new(Recorder::new("denied"));
    let (fake, feed) = FakeWatch::new(false);
    fake.health.send_modify(|h| {
        let now = Instant::now();
        h.broken_since = Some(now);
        h.last_error_at = Some(now);
        h.last_error = Some("configmaps is forbidden".into());
        h.refused = true;
    });
    let error =
        event_loop(&[&recorder], &Metrics::new()).drive(vec![feed], CancellationToken::new(), 1).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "event loop test, handler denied: watch of v1/configmaps in all namespaces: configmaps is forbidden"
    );
}

#[tokio::test]
async fn registration_and_threadiness_errors_name_the_loop_and_handler() {
    let mut event_loop = EventLoop::new("test", client());
    event_loop.register(DefaultHandler::new("twice"), configmaps()).unwrap();
    let duplicate = event_loop.register(DefaultHandler::new("twice"), configmaps()).unwrap_err();
    assert_eq!(duplicate.to_string(), r#"event loop test: a handler named "twice" is already registered"#);
    let selector = event_loop.register(DefaultHandler::new("bad"), configmaps().labels("a in (")).unwrap_err();
    assert!(matches!(&selector, HandlerError::Selector { handler, .. } if handler == "bad"), "{selector}");
    let threadiness = event_loop.run(CancellationToken::new(), 0).await.unwrap_err();
    assert_eq!(threadiness.label(), "threadiness");
}
