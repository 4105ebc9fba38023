//! The engine end to end with in-process sources and destinations: isolation, filtering,
//! dedup, restarts and draining.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::FeedFactory;
use ktrigger_api::{DedupSpec, DestinationSpec, SourceSpec, Trigger, TriggerServiceSpec};
use ktrigger_core::{
    BuildContext, DeliveryError, DeliveryRequest, Destination, DestinationType, Engine, EngineOptions, PropertyError,
    Receipt, Registry, Secret, SecretKeyRef, SecretReader, SecretRef,
};
use serde_json::{Value, json};
use tokio::sync::broadcast;

type Received = Arc<Mutex<Vec<(String, Value)>>>;

/// Records what it receives; panics when told to by its `panic` property, and renders by
/// panicking an event that has `renderPanic: true`.
struct Recorder {
    trigger: String,
    received: Received,
    panics: bool,
}

#[async_trait]
impl Destination for Recorder {
    fn render(&self, request: &DeliveryRequest<'_>) -> Result<Value, DeliveryError> {
        if request.event.object["renderPanic"] == json!(true) {
            panic!("recorder told to panic while rendering");
        }
        Ok(request.event.object.clone())
    }
    async fn deliver(&self, request: &DeliveryRequest<'_>) -> Result<Receipt, DeliveryError> {
        if self.panics {
            panic!("recorder told to panic");
        }
        self.received.lock().unwrap().push((self.trigger.clone(), request.event.object.clone()));
        Ok(Receipt::default())
    }
}

struct RecorderFactory(Received);

/// Records what it receives.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RecorderProperties {
    /// Panic on delivery.
    #[serde(default)]
    panic: bool,
    /// A secret appended to the trigger name.
    #[serde(default)]
    token_from: Option<SecretRef>,
}

impl DestinationType for RecorderFactory {
    type Properties = RecorderProperties;
    const NAME: &'static str = "recorder";
    const EXAMPLE: &'static str = "type: recorder";

    fn build(&self, props: RecorderProperties, context: &BuildContext) -> Result<Arc<dyn Destination>, PropertyError> {
        let mut label = context.trigger.trigger.clone();
        if let Some(reference) = props.token_from {
            let token = reference.resolve(&context.secrets, "tokenFrom")?;
            label = format!("{label}:{}", token.expose());
        }
        Ok(Arc::new(Recorder { trigger: label, received: self.0.clone(), panics: props.panic }))
    }
}

struct Harness {
    engine: Engine,
    feed: broadcast::Sender<Value>,
    received: Received,
}

impl Harness {
    fn new() -> Self {
        Harness::with_secrets(None)
    }

    fn with_secrets(reader: Option<Arc<dyn SecretReader>>) -> Self {
        Harness::with_options(reader, false)
    }

    fn with_options(reader: Option<Arc<dyn SecretReader>>, dry_run: bool) -> Self {
        let (feed, _) = broadcast::channel(64);
        let received = Received::default();
        let mut registry = Registry::default();
        registry.add_source_type(FeedFactory(feed.clone()));
        registry.add_destination_type(RecorderFactory(received.clone()));
        let options = EngineOptions {
            dry_run,
            source_backoff: (Duration::from_millis(10), Duration::from_millis(50)),
            ..EngineOptions::default()
        };
        let mut builder = Engine::builder().registry(registry).options(options);
        if let Some(reader) = reader {
            builder = builder.secret_reader(reader);
        }
        let engine = builder.build();
        Harness { engine, feed, received }
    }

    async fn publish(&self, object: Value) {
        common::publish(&self.feed, object).await;
    }

    async fn wait_for(&self, count: usize) -> Vec<(String, Value)> {
        for _ in 0..400 {
            if self.received.lock().unwrap().len() >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut received = self.received.lock().unwrap().clone();
        received.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.to_string().cmp(&b.1.to_string())));
        received
    }
}

fn trigger(name: &str, filter: Option<&str>, destination: Value) -> Trigger {
    Trigger {
        name: Some(name.into()),
        source: SourceSpec { type_name: "feed".into(), properties: Value::Null },
        filter: filter.map(String::from),
        destinations: vec![DestinationSpec {
            type_name: "recorder".into(),
            properties: destination,
            retry: Some(ktrigger_api::RetrySpec { max_attempts: Some(1), ..Default::default() }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn spec(triggers: Vec<Trigger>) -> TriggerServiceSpec {
    TriggerServiceSpec { triggers, ..Default::default() }
}

#[tokio::test]
async fn a_panicking_destination_does_not_stop_a_sibling_trigger() {
    let mut h = Harness::new();
    let report = h
        .engine
        .apply(
            "ns",
            "svc",
            &spec(vec![trigger("broken", None, json!({"panic": true})), trigger("healthy", None, json!({}))]),
        )
        .await;
    assert_eq!(report.started.len(), 2);
    h.publish(json!({"n": 1})).await;
    h.publish(json!({"n": 2})).await;
    let received = h.wait_for(2).await;
    assert_eq!(received, [("healthy".to_string(), json!({"n": 1})), ("healthy".to_string(), json!({"n": 2}))]);
    let status = h.engine.status("ns", "svc");
    let broken = status.iter().find(|s| s.name == "broken").unwrap();
    assert_eq!(broken.dead_lettered, 2);
    assert!(broken.last_error.as_deref().unwrap().contains("destination panicked"), "{broken:?}");
}

#[tokio::test]
async fn an_invalid_filter_is_skipped_and_siblings_still_fire() {
    let mut h = Harness::new();
    let report = h
        .engine
        .apply(
            "ns",
            "svc",
            &spec(vec![
                trigger("bad", Some("object.n >"), json!({})),
                trigger("good", Some("object.n > 1"), json!({})),
            ]),
        )
        .await;
    assert_eq!(report.skipped.len(), 1);
    let problem = report.skipped[0].to_string();
    assert!(problem.starts_with("trigger ns/svc/bad: triggers[0].filter: line 1, column"), "{problem}");
    h.publish(json!({"n": 1})).await;
    h.publish(json!({"n": 2})).await;
    assert_eq!(h.wait_for(1).await, [("good".to_string(), json!({"n": 2}))]);
    let status = h.engine.status("ns", "svc");
    let good = status.iter().find(|s| s.name == "good").unwrap();
    assert_eq!((good.received, good.filtered, good.fired), (2, 1, 1));
    let bad = status.iter().find(|s| s.name == "bad").unwrap();
    assert!(!bad.ready && bad.last_error.as_deref().unwrap().contains("filter"), "{bad:?}");
}

#[tokio::test]
async fn filter_errors_count_as_not_matched_never_as_a_pass() {
    let mut h = Harness::new();
    h.engine.apply("ns", "svc", &spec(vec![trigger("t", Some("object.missing.field == 1"), json!({}))])).await;
    h.publish(json!({"n": 1})).await;
    h.publish(json!({"missing": {"field": 1}})).await;
    assert_eq!(h.wait_for(1).await, [("t".to_string(), json!({"missing": {"field": 1}}))]);
    let snapshot = &h.engine.snapshot()[0].1;
    assert_eq!((snapshot.received, snapshot.filter_errors, snapshot.fired), (2, 1, 1));
}

#[tokio::test]
async fn a_panicking_source_is_restarted_and_keeps_delivering() {
    let mut h = Harness::new();
    h.engine.apply("ns", "svc", &spec(vec![trigger("t", None, json!({}))])).await;
    h.publish(json!({"panic": true})).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.publish(json!({"n": 1})).await;
    assert_eq!(h.wait_for(1).await, [("t".to_string(), json!({"n": 1}))]);
    let snapshot = &h.engine.snapshot()[0].1;
    assert_eq!(snapshot.restarts, 1);
    assert!(snapshot.last_error.as_deref().unwrap().contains("source panicked: feed asked to panic"));
}

#[tokio::test]
async fn dedup_fires_once_per_key_within_the_window() {
    let mut h = Harness::new();
    let mut t = trigger("t", None, json!({}));
    t.dedup = Some(DedupSpec { key: "object.pod".into(), window: "10m".into() });
    h.engine.apply("ns", "svc", &spec(vec![t])).await;
    for pod in ["a", "a", "b", "a"] {
        h.publish(json!({"pod": pod})).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.wait_for(2).await, [("t".to_string(), json!({"pod": "a"})), ("t".to_string(), json!({"pod": "b"}))]);
    let status = &h.engine.status("ns", "svc")[0];
    assert_eq!(status.active_events.len(), 2);
    assert!(status.active_events.iter().all(|e| e.state == "firing"));
}

#[tokio::test]
async fn reapplying_an_unchanged_trigger_keeps_it_and_a_changed_one_restarts() {
    let mut h = Harness::new();
    h.engine.apply("ns", "svc", &spec(vec![trigger("a", None, json!({})), trigger("b", None, json!({}))])).await;
    h.publish(json!({"n": 1})).await;
    h.wait_for(2).await;
    let report = h
        .engine
        .apply("ns", "svc", &spec(vec![trigger("a", None, json!({})), trigger("b", Some("true"), json!({}))]))
        .await;
    assert_eq!(report.unchanged.len(), 1);
    assert_eq!(report.started.len(), 1);
    let status = h.engine.status("ns", "svc");
    assert_eq!(status.iter().find(|s| s.name == "a").unwrap().fired, 1, "unchanged trigger keeps its counters");
    assert_eq!(status.iter().find(|s| s.name == "b").unwrap().fired, 0, "changed trigger starts afresh");
    let removed = h.engine.remove("ns", "svc");
    assert_eq!(removed.len(), 2);
    assert!(h.engine.status("ns", "svc").is_empty());
}

#[tokio::test]
async fn unknown_types_are_reported_with_the_known_ones() {
    let h = Harness::new();
    let mut t = trigger("t", None, json!({}));
    t.source.type_name = "nope".into();
    t.destinations[0].type_name = "nada".into();
    let problems = h.engine.check("", "svc", &spec(vec![t]));
    assert_eq!(
        problems[0].messages,
        [
            "triggers[0].destinations[0].type: unknown destination type \"nada\"; known types: recorder",
            "triggers[0].source.type: unknown source type \"nope\"; known types: feed"
        ]
    );
}

#[tokio::test]
async fn shutdown_drains_queued_deliveries() {
    let mut h = Harness::new();
    h.engine.apply("ns", "svc", &spec(vec![trigger("t", None, json!({}))])).await;
    for n in 0..20 {
        h.publish(json!({"n": n})).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let report = h.engine.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.lost, 0);
    assert_eq!(h.received.lock().unwrap().len(), 20);
    assert_eq!(report.stats[0].1.delivered, 20);
}

#[tokio::test]
async fn debounce_fires_once_with_the_latest_event_after_a_quiet_period() {
    let mut h = Harness::new();
    let mut t = trigger("t", None, json!({}));
    t.debounce = Some("300ms".into());
    h.engine.apply("ns", "svc", &spec(vec![t])).await;
    for n in 1..=3 {
        h.publish(json!({"n": n})).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(h.received.lock().unwrap().is_empty(), "nothing fires during the quiet period");
    assert_eq!(h.wait_for(1).await, [("t".to_string(), json!({"n": 3}))]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(h.received.lock().unwrap().len(), 1);
    let snapshot = &h.engine.snapshot()[0].1;
    assert_eq!((snapshot.received, snapshot.filtered, snapshot.fired), (3, 2, 1));
}

#[tokio::test]
async fn rate_limited_events_are_counted_not_delivered() {
    let mut h = Harness::new();
    let mut t = trigger("t", None, json!({}));
    t.rate_limit = Some(ktrigger_api::RateLimitSpec { per_minute: 2, burst: None });
    h.engine.apply("ns", "svc", &spec(vec![t])).await;
    for n in 1..=4 {
        h.publish(json!({"n": n})).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.wait_for(2).await, [("t".to_string(), json!({"n": 1})), ("t".to_string(), json!({"n": 2}))]);
    let snapshot = &h.engine.snapshot()[0].1;
    assert_eq!((snapshot.received, snapshot.filtered, snapshot.fired), (4, 2, 2));
}

/// Secrets by name (keys ignored), changeable while the engine runs.
#[derive(Default)]
struct Vault(Mutex<std::collections::BTreeMap<String, String>>);

#[async_trait]
impl SecretReader for Vault {
    async fn read(&self, namespace: &str, _: Option<&str>, reference: &SecretKeyRef) -> Result<Secret, String> {
        let values = self.0.lock().unwrap();
        let value =
            values.get(&reference.name).ok_or_else(|| format!("Secret {namespace}/{} not found", reference.name))?;
        Ok(Secret::new(value.clone()))
    }
}

#[tokio::test]
async fn secrets_are_read_on_apply_and_a_changed_value_restarts_only_its_trigger() {
    let vault = Arc::new(Vault::default());
    let mut h = Harness::with_secrets(Some(vault.clone()));
    let uses = trigger("uses", None, json!({"tokenFrom": {"secretKeyRef": {"name": "api", "key": "token"}}}));
    let spec = spec(vec![uses, trigger("plain", None, json!({}))]);
    let ids = |report: &[(ktrigger_core::TriggerId, String)]| -> Vec<String> {
        report.iter().map(|(id, _)| id.trigger.clone()).collect()
    };

    let report = h.engine.apply("ns", "svc", &spec).await;
    assert!(report.secrets_unreadable);
    assert_eq!(ids(&report.started), ["plain"]);
    assert_eq!(
        report.skipped[0].messages,
        ["triggers[0].destinations[0].properties.tokenFrom: Secret ns/api not found"]
    );

    vault.0.lock().unwrap().insert("api".into(), "one".into());
    let report = h.engine.apply("ns", "svc", &spec).await;
    assert!(!report.secrets_unreadable && report.skipped.is_empty());
    assert_eq!((ids(&report.started), report.unchanged.len()), (vec!["uses".to_string()], 1));
    let report = h.engine.apply("ns", "svc", &spec).await;
    assert_eq!((report.started.len(), report.unchanged.len()), (0, 2), "nothing changed");

    vault.0.lock().unwrap().insert("api".into(), "two".into());
    let report = h.engine.apply("ns", "svc", &spec).await;
    assert_eq!(ids(&report.started), ["uses"]);
    assert_eq!(report.unchanged.iter().map(|id| id.trigger.as_str()).collect::<Vec<_>>(), ["plain"]);
    h.publish(json!({"n": 1})).await;
    let received = h.wait_for(2).await;
    assert_eq!(received, [("plain".to_string(), json!({"n": 1})), ("uses:two".to_string(), json!({"n": 1}))]);
}

#[tokio::test]
async fn without_a_secret_reader_a_secret_key_ref_is_skipped_with_the_reason() {
    let mut h = Harness::new();
    let uses = trigger("uses", None, json!({"tokenFrom": {"secretKeyRef": {"name": "api", "key": "token"}}}));
    let report = h.engine.apply("ns", "svc", &spec(vec![uses])).await;
    assert!(!report.secrets_unreadable, "nothing was read, so nothing can be read again");
    let message = &report.skipped[0].messages[0];
    assert!(
        message.starts_with("triggers[0].destinations[0].properties.tokenFrom: secretKeyRef api/token: no cluster"),
        "{message}"
    );
    assert!(
        h.engine
            .check(
                "ns",
                "svc",
                &spec(vec![trigger(
                    "uses",
                    None,
                    json!({"tokenFrom": {"secretKeyRef": {"name": "api", "key": "token"}}})
                )])
            )
            .is_empty(),
        "offline checks accept references unread"
    );
}

#[tokio::test]
async fn a_panic_in_event_processing_is_counted_and_processing_restarts() {
    let mut h = Harness::with_options(None, true);
    h.engine.apply("ns", "svc", &spec(vec![trigger("t", None, json!({}))])).await;
    h.publish(json!({"renderPanic": true})).await;
    h.publish(json!({"n": 1})).await;
    let mut snapshot = h.engine.snapshot()[0].1.clone();
    for _ in 0..400 {
        if snapshot.fired >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        snapshot = h.engine.snapshot()[0].1.clone();
    }
    assert_eq!((snapshot.received, snapshot.fired, snapshot.restarts), (2, 2, 1));
    let error = snapshot.last_error.unwrap();
    assert!(error.contains("event processing panicked: recorder told to panic while rendering"), "{error}");
}

#[tokio::test]
async fn a_runaway_filter_stops_at_its_cost_limit_and_a_sibling_keeps_delivering() {
    let mut h = Harness::new();
    let bomb = trigger("bomb", Some("object.items.all(a, object.items.exists(b, b == a))"), json!({}));
    h.engine.apply("ns", "svc", &spec(vec![bomb, trigger("healthy", None, json!({}))])).await;
    let items: Vec<i64> = (0..3000).collect();
    h.publish(json!({"n": 1})).await;
    h.publish(json!({"items": items})).await;
    let received = h.wait_for(2).await;
    assert_eq!(received.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(), ["healthy", "healthy"]);
    let mut bomb = h.engine.status("ns", "svc").into_iter().find(|s| s.name == "bomb").unwrap();
    for _ in 0..400 {
        if bomb.filtered >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        bomb = h.engine.status("ns", "svc").into_iter().find(|s| s.name == "bomb").unwrap();
    }
    assert_eq!((bomb.received, bomb.filtered, bomb.fired), (2, 2, 0));
    let error = bomb.last_error.unwrap();
    assert!(error.contains("filter could not be evaluated: evaluation exceeded the cost limit of 1000000"), "{error}");
}

#[tokio::test]
async fn bombs_are_refused_at_load_with_the_field_and_a_sibling_still_fires() {
    let mut h = Harness::new();
    let sum = vec!["1"; 1500].join("+");
    let items: Vec<String> = (0..300).map(|i| i.to_string()).collect();
    let list = format!("[{}]", items.join(","));
    let mut debounce = trigger("debounce", None, json!({}));
    debounce.debounce = Some("500000000000y".into());
    let mut window = trigger("window", None, json!({}));
    window.dedup = Some(DedupSpec { key: "object.n".into(), window: "1000000h".into() });
    let triggers = vec![
        trigger("sum", Some(&format!("{sum} > 0")), json!({})),
        trigger("maps", Some(&format!("size({list}.map(a, {list}.map(b, {list}.map(c, a + b + c)))) > 0")), json!({})),
        debounce,
        window,
        trigger("healthy", None, json!({})),
    ];
    let report = h.engine.apply("ns", "svc", &spec(triggers)).await;
    let problems: Vec<String> = report.skipped.iter().map(ToString::to_string).collect();
    assert_eq!(problems.len(), 4, "{problems:?}");
    assert!(
        problems[0]
            .starts_with("trigger ns/svc/sum: triggers[0].filter: line 1, column 1: expression is nested too deeply"),
        "{}",
        problems[0]
    );
    assert!(problems[1].contains("triggers[1].filter: line 1, column 1: estimated cost"), "{}", problems[1]);
    assert!(
        problems[2].contains("triggers[2].debounce: duration \"500000000000y\" is longer than the maximum of 30 days"),
        "{}",
        problems[2]
    );
    assert!(
        problems[3].contains("triggers[3].dedup.window: duration \"1000000h\" is longer than the maximum of 30 days"),
        "{}",
        problems[3]
    );
    h.publish(json!({"n": 1})).await;
    assert_eq!(h.wait_for(1).await, [("healthy".to_string(), json!({"n": 1}))]);
}
