//! The engine over the embedded store: what one engine left behind (queued deliveries with their
//! attempts, dedup windows, a debounced event) is continued by the next engine on the same file,
//! and a source hears that an event fired only once it is stored.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ktrigger_api::{Trigger, TriggerServiceSpec};
use ktrigger_core::{
    BuildContext, DeliveryError, DeliveryRequest, Destination, DestinationType, Engine, EngineOptions, Event,
    EventSink, Handled, Outcome, PropertyError, Receipt, RedbStore, Registry, Source, SourceError, SourceType,
    StateStore,
};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// `(delivery id, object)` of every delivery accepted.
type Received = Arc<Mutex<Vec<(String, Value)>>>;

/// Accepts deliveries while `up`, else fails them as a receiver that is down would.
struct Receiver {
    received: Received,
    up: Arc<AtomicBool>,
}

#[async_trait]
impl Destination for Receiver {
    fn render(&self, request: &DeliveryRequest<'_>) -> Result<Value, DeliveryError> {
        Ok(request.event.object.clone())
    }
    async fn deliver(&self, request: &DeliveryRequest<'_>) -> Result<Receipt, DeliveryError> {
        if !self.up.load(Ordering::SeqCst) {
            return Err(DeliveryError::transient("connection refused"));
        }
        self.received.lock().unwrap().push((request.id.to_string(), request.event.object.clone()));
        Ok(Receipt::default())
    }
}

/// Takes no properties.
#[derive(serde::Deserialize, schemars::JsonSchema)]
struct NoProperties {}

struct ReceiverFactory(Received, Arc<AtomicBool>);

impl DestinationType for ReceiverFactory {
    type Properties = NoProperties;
    const NAME: &'static str = "receiver";
    const EXAMPLE: &'static str = "type: receiver";

    fn build(&self, _: NoProperties, _: &BuildContext) -> Result<Arc<dyn Destination>, PropertyError> {
        Ok(Arc::new(Receiver { received: self.0.clone(), up: self.1.clone() }))
    }
}

/// An event to hand over, and where to say how the trigger handled it.
type Offer = (Event, oneshot::Sender<Handled>);

/// Hands over what the test offers with `send_tracked` and reports how each was handled.
struct Tracked(Arc<tokio::sync::Mutex<mpsc::Receiver<Offer>>>);

#[async_trait]
impl Source for Tracked {
    async fn run(&self, sink: EventSink, cancel: CancellationToken) -> Result<(), SourceError> {
        let mut offers = self.0.lock().await;
        loop {
            let (event, answer) = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                offer = offers.recv() => match offer {
                    Some(offer) => offer,
                    None => return Ok(()),
                },
            };
            let Some(tracked) = sink.send_tracked(Arc::new(event)).await else { return Ok(()) };
            let _ = answer.send(tracked.handled().await);
        }
    }
}

struct TrackedFactory(Arc<tokio::sync::Mutex<mpsc::Receiver<Offer>>>);

impl SourceType for TrackedFactory {
    type Properties = NoProperties;
    const NAME: &'static str = "tracked";
    const EXAMPLE: &'static str = "type: tracked";

    fn build(&self, _: NoProperties, _: &BuildContext) -> Result<Arc<dyn Source>, PropertyError> {
        Ok(Arc::new(Tracked(self.0.clone())))
    }
}

/// One process's worth: an engine on the store in `dir`.
struct Run {
    engine: Engine,
    offers: mpsc::Sender<Offer>,
    received: Received,
}

impl Run {
    async fn start(dir: &std::path::Path, spec: &TriggerServiceSpec, up: bool) -> Run {
        let store = reopen(dir);
        let (offers, waiting) = mpsc::channel(16);
        let received = Received::default();
        let up = Arc::new(AtomicBool::new(up));
        let mut registry = Registry::default();
        registry.add_source_type(TrackedFactory(Arc::new(tokio::sync::Mutex::new(waiting))));
        registry.add_destination_type(ReceiverFactory(received.clone(), up.clone()));
        let options = EngineOptions {
            source_backoff: (Duration::from_millis(10), Duration::from_millis(50)),
            ..Default::default()
        };
        let mut engine = Engine::builder().registry(registry).options(options).store(Arc::new(store)).build();
        let report = engine.apply("ns", "svc", spec).await;
        assert!(report.skipped.is_empty(), "{:?}", report.skipped);
        Run { engine, offers, received }
    }

    /// Hands `object` over and waits for how the trigger handled it.
    async fn offer(&self, object: Value) -> Handled {
        let (answer, handled) = oneshot::channel();
        let event = Event::new("tracked", "create", object.clone()).with_id(object["id"].to_string());
        self.offers.send((event, answer)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), handled).await.expect("handled in time").unwrap()
    }

    async fn wait_for(&self, count: usize) -> Vec<(String, Value)> {
        for _ in 0..1000 {
            if self.received.lock().unwrap().len() >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.received.lock().unwrap().clone()
    }

    /// Stops as a process would at the end of its grace period.
    async fn stop(self) -> usize {
        self.engine.shutdown(Duration::from_millis(50)).await.kept
    }
}

/// Opens the store in `dir` once the previous engine's store let go of it.
fn reopen(dir: &std::path::Path) -> RedbStore {
    for _ in 0..250 {
        match RedbStore::open(dir) {
            Ok((store, None)) => return store,
            Ok((_, Some(moved))) => panic!("the store was moved aside: {}", moved.reason),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    panic!("the previous store never let go of the file");
}

fn spec(extra: Value) -> TriggerServiceSpec {
    let mut trigger = json!({
        "name": "t",
        "source": {"type": "tracked"},
        "destinations": [{"type": "receiver", "retry": {"maxAttempts": 1000, "backoff": "20ms", "maxBackoff": "50ms"}}],
    });
    if let (Some(trigger), Some(extra)) = (trigger.as_object_mut(), extra.as_object()) {
        trigger.extend(extra.clone());
    }
    let trigger: Trigger = serde_json::from_value(trigger).unwrap();
    TriggerServiceSpec { triggers: vec![trigger], ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_queued_at_a_stop_are_delivered_by_the_next_run_with_the_same_ids() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(json!({}));
    let first = Run::start(dir.path(), &spec, false).await;
    for n in 0..20 {
        assert_eq!(first.offer(json!({"id": n})).await, Handled::Fired, "fired once stored");
    }
    assert!(first.wait_for(1).await.is_empty(), "the receiver is down");
    assert_eq!(first.stop().await, 20, "all 20 kept for the next start");

    let second = Run::start(dir.path(), &spec, true).await;
    let received = second.wait_for(20).await;
    // Sent 16 at a time (the default concurrency, no ordering asked): in any order.
    let mut numbers: Vec<i64> = received.iter().map(|(_, object)| object["id"].as_i64().unwrap()).collect();
    numbers.sort();
    assert_eq!(numbers, (0..20).collect::<Vec<_>>(), "every delivery, once");
    let statuses = second.engine.status("ns", "svc");
    assert_eq!(statuses[0].restored_deliveries, 20, "the depth found at start is in status");
    let mut ids: Vec<&str> = received.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort();
    let third_ids = {
        let check = Run::start(tempfile::tempdir().unwrap().path(), &spec, true).await;
        for n in 0..20 {
            check.offer(json!({"id": n})).await;
        }
        let mut ids: Vec<String> = check.wait_for(20).await.into_iter().map(|(id, _)| id).collect();
        check.stop().await;
        ids.sort();
        ids
    };
    assert_eq!(ids, third_ids, "ids depend on the trigger, destination and event only");
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dedup_key_firing_before_a_restart_does_not_fire_again_inside_its_window() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(json!({"dedup": {"key": "string(object.key)", "window": "10m"}}));
    let first = Run::start(dir.path(), &spec, true).await;
    assert_eq!(first.offer(json!({"id": 1, "key": "a"})).await, Handled::Fired);
    assert_eq!(first.wait_for(1).await.len(), 1);
    first.stop().await;

    let second = Run::start(dir.path(), &spec, true).await;
    let handled = second.offer(json!({"id": 2, "key": "a"})).await;
    assert!(matches!(&handled, Handled::Dropped(Outcome::Duplicate, _)), "{handled:?}");
    assert_eq!(second.offer(json!({"id": 3, "key": "b"})).await, Handled::Fired, "other keys still fire");
    let received = second.wait_for(1).await;
    assert_eq!(received.len(), 1, "{received:?}");
    let active = &second.engine.status("ns", "svc")[0].active_events;
    let keys: Vec<&str> = active.iter().map(|a| a.key.as_str()).collect();
    assert_eq!(keys, ["b", "a"], "both windows are active, newest first");
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debounced_event_held_at_a_stop_fires_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(json!({"debounce": "300ms"}));
    let first = Run::start(dir.path(), &spec, true).await;
    assert_eq!(first.offer(json!({"id": 1})).await, Handled::Held);
    assert_eq!(first.offer(json!({"id": 2})).await, Handled::Held, "replaces the first");
    first.stop().await;
    assert!(first_received_nothing(&dir).await, "not fired at the stop");

    let second = Run::start(dir.path(), &spec, true).await;
    let received = second.wait_for(1).await;
    let numbers: Vec<i64> = received.iter().map(|(_, object)| object["id"].as_i64().unwrap()).collect();
    assert_eq!(numbers, [2], "the latest held event fires once after its quiet period");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(second.received.lock().unwrap().len(), 1, "and only once");
    second.stop().await;
}

/// Whether nothing is queued in the store: the held event was not fired into a queue.
async fn first_received_nothing(dir: &tempfile::TempDir) -> bool {
    reopen(dir.path()).metrics().pending_deliveries == 0
}
