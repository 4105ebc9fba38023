//! Memory bounds seen from the engine: a trigger over its queue byte limit leaves the others
//! alone, and what is still in flight at shutdown is counted as lost.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::FeedFactory;
use ktrigger_api::{DestinationSpec, OverflowPolicy, SourceSpec, Trigger, TriggerServiceSpec};
use ktrigger_core::{
    BuildContext, DeliveryError, DeliveryRequest, Destination, DestinationType, Engine, PropertyError, QueueLimits,
    Receipt, Registry, StatsSnapshot,
};
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// Records what it receives, or never answers when its `hang` property is true.
struct Receiver {
    received: Arc<Mutex<Vec<Value>>>,
    hangs: bool,
}

#[async_trait]
impl Destination for Receiver {
    fn render(&self, request: &DeliveryRequest<'_>) -> Result<Value, DeliveryError> {
        Ok(request.event.object.clone())
    }
    async fn deliver(&self, request: &DeliveryRequest<'_>) -> Result<Receipt, DeliveryError> {
        if self.hangs {
            std::future::pending::<()>().await;
        }
        self.received.lock().unwrap().push(request.event.object.clone());
        Ok(Receipt::default())
    }
}

/// Receives deliveries.
#[derive(serde::Deserialize, schemars::JsonSchema)]
struct ReceiverProperties {
    /// Never answer.
    #[serde(default)]
    hang: bool,
}

struct ReceiverFactory(Arc<Mutex<Vec<Value>>>);

impl DestinationType for ReceiverFactory {
    type Properties = ReceiverProperties;
    const NAME: &'static str = "receiver";
    const EXAMPLE: &'static str = "type: receiver";

    fn build(&self, props: ReceiverProperties, _: &BuildContext) -> Result<Arc<dyn Destination>, PropertyError> {
        Ok(Arc::new(Receiver { received: self.0.clone(), hangs: props.hang }))
    }
}

struct Harness {
    engine: Engine,
    feed: broadcast::Sender<Value>,
    received: Arc<Mutex<Vec<Value>>>,
}

impl Harness {
    fn new(queue_limits: QueueLimits) -> Self {
        let (feed, _) = broadcast::channel(256);
        let received = Arc::new(Mutex::new(Vec::new()));
        let mut registry = Registry::default();
        registry.add_source_type(FeedFactory(feed.clone()));
        registry.add_destination_type(ReceiverFactory(received.clone()));
        let engine = Engine::builder().registry(registry).queue_limits(queue_limits).build();
        Harness { engine, feed, received }
    }

    async fn publish(&self, object: Value) {
        common::publish(&self.feed, object).await;
    }

    async fn wait_for(&self, count: usize) -> usize {
        for _ in 0..400 {
            if self.received.lock().unwrap().len() >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.received.lock().unwrap().len()
    }
}

/// A trigger taking the events addressed `to` it, delivering to a receiver that may hang.
fn trigger(name: &str, hang: bool) -> Trigger {
    Trigger {
        name: Some(name.into()),
        source: SourceSpec { type_name: "feed".into(), properties: Value::Null },
        filter: Some(format!("object.to == {name:?}")),
        destinations: vec![DestinationSpec {
            type_name: "receiver".into(),
            properties: json!({"hang": hang}),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn spec(triggers: Vec<Trigger>) -> TriggerServiceSpec {
    TriggerServiceSpec { triggers, ..Default::default() }
}

fn payload(to: &str, n: usize) -> Value {
    json!({"to": to, "n": n, "data": "x".repeat(20_000)})
}

/// `trigger` whose destination dead-letters what does not fit instead of making its source wait.
fn dead_lettering(name: &str, hang: bool) -> Trigger {
    let mut trigger = trigger(name, hang);
    trigger.destinations[0].overflow = Some(OverflowPolicy::DeadLetter);
    trigger
}

/// Runs `hog` (delivering to a hanging receiver) beside a calm trigger, with room for about ten
/// events of 20 KB in all, so that the hog may fill only its half: 20 events to the hog, then 20
/// to the calm trigger, each of which must be delivered. The hog's counters, and the harness.
async fn hog_beside_a_calm_trigger(hog: Trigger) -> (StatsSnapshot, Harness) {
    let mut h = Harness::new(QueueLimits { per_trigger: 10_000_000, total: 200_000 });
    h.engine.apply("ns", "hog", &spec(vec![hog])).await;
    h.engine.apply("ns", "calm", &spec(vec![trigger("calm", false)])).await;
    for n in 0..20 {
        h.publish(payload("hog", n)).await;
    }
    for n in 0..20 {
        h.publish(payload("calm", n)).await;
        assert_eq!(h.wait_for(n + 1).await, n + 1, "the calm trigger delivers event {n}");
    }
    let stats = h.engine.snapshot();
    let of = |name: &str| stats.iter().find(|(id, _)| id.trigger == name).map(|(_, s)| s.clone()).unwrap();
    let (hog, calm) = (of("hog"), of("calm"));
    assert_eq!((calm.delivered, calm.queue_byte_limited, calm.dead_lettered), (20, 0, 0));
    assert_eq!(calm.backpressured, 0, "{calm:?}");
    (hog, h)
}

#[tokio::test]
async fn a_trigger_over_its_queue_byte_limit_does_not_affect_another_triggers_deliveries() {
    let (hog, h) = hog_beside_a_calm_trigger(dead_lettering("hog", true)).await;
    assert_eq!(hog.fired, 20);
    assert!(hog.queue_byte_limited >= 15, "at most 4 events of 20 KB fit in its 100 KB: {hog:?}");
    assert_eq!(hog.dead_lettered, hog.queue_byte_limited);
    let status = h.engine.status("ns", "hog");
    assert_eq!(status[0].queue_byte_limited, hog.queue_byte_limited);
    assert!(status[0].last_error.as_deref().unwrap_or("").contains("queue byte limit"), "{status:?}");
}

#[tokio::test]
async fn a_trigger_waiting_for_room_does_not_affect_another_triggers_deliveries() {
    let (hog, _) = hog_beside_a_calm_trigger(trigger("hog", true)).await;
    assert!(hog.fired < 20, "the hog waits for room with its queue full: {hog:?}");
    assert_eq!((hog.queue_byte_limited, hog.dead_lettered), (0, 0), "nothing dropped: {hog:?}");
    assert!(hog.backpressured >= 1, "its waits are counted: {hog:?}");
}

#[tokio::test]
async fn shutdown_counts_the_delivery_in_flight_as_lost() {
    let mut h = Harness::new(QueueLimits::default());
    h.engine.apply("ns", "stuck", &spec(vec![trigger("stuck", true)])).await;
    for n in 0..3 {
        h.publish(json!({"to": "stuck", "n": n})).await;
    }
    for _ in 0..400 {
        if h.engine.snapshot()[0].1.fired == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let report = h.engine.shutdown(Duration::from_millis(100)).await;
    assert_eq!(report.lost, 3, "one being delivered and two waiting");
}
