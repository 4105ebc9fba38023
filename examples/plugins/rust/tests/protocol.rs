//! The Rust example plugin, started by the plugin manager as ktrigger starts it, its types used
//! through the registry as the engine uses them.

use std::sync::Arc;
use std::time::Duration;

use ktrigger_core::{BuildContext, DeliveryRequest, Event, EventSink, Handled, Registry, TriggerId};
use ktrigger_plugin::connect::Timeouts;
use ktrigger_plugin::{PluginManager, PluginsFile};
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn started() -> (PluginManager, Registry) {
    let file = format!("plugins:\n- name: rust\n  command: [{}]\n", env!("CARGO_BIN_EXE_ktrigger-example-plugin"));
    let manager = PluginManager::start(&PluginsFile::parse(&file).unwrap(), Timeouts::default()).await;
    assert!(manager.failed().is_empty(), "{:?}", manager.failed());
    let mut registry = Registry::default();
    let problems = ktrigger_plugin::register(&mut registry, &manager, &Arc::default());
    assert!(problems.is_empty(), "{problems:?}");
    (manager, registry)
}

fn context() -> BuildContext {
    BuildContext::new(TriggerId { namespace: "ns".into(), service: "svc".into(), trigger: "numbers".into() })
}

/// Runs the `sequence` source with `properties` until `wanted` events arrived; their numbers.
async fn numbers(registry: &Registry, properties: serde_json::Value, wanted: usize) -> Vec<u64> {
    let source = registry.source("sequence").unwrap().build(&properties, &context()).unwrap();
    let (sink, mut events) = EventSink::channel(1);
    let cancel = CancellationToken::new();
    let running = tokio::spawn({
        let cancel = cancel.clone();
        async move { source.run(sink, cancel).await }
    });
    let mut seen = Vec::new();
    while seen.len() < wanted {
        let envelope = tokio::time::timeout(Duration::from_secs(10), events.recv()).await.unwrap().unwrap();
        let event = envelope.event.clone();
        envelope.answer(Handled::Fired);
        assert_eq!(event.meta.id, format!("sequence-{}", event.object["n"]));
        seen.push(event.object["n"].as_u64().unwrap());
    }
    cancel.cancel();
    running.await.unwrap().unwrap();
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_source_goes_on_after_the_last_acknowledged_event() {
    let (manager, registry) = started().await;
    assert_eq!(numbers(&registry, json!({"count": 3, "intervalMs": 1}), 3).await, [1, 2, 3]);
    // The acknowledgement of the last event travels after it; let it arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(numbers(&registry, json!({"count": 5, "intervalMs": 1}), 2).await, [4, 5]);
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn properties_are_checked_against_the_plugin_schema() {
    let (manager, registry) = started().await;
    let error = registry.source("sequence").unwrap().build(&json!({"from": 2}), &context()).err().unwrap();
    assert_eq!(
        error.to_string(),
        "properties: \"count\" is a required property (schema of type \"sequence\" from plugin \"rust\")"
    );
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tally_destination_answers_with_its_count() {
    let (manager, registry) = started().await;
    let destination = registry.destination("tally").unwrap().build(&json!({}), &context()).unwrap();
    let event = Event::new("webhook", "receive", json!({"x": 1}));
    let trigger = context().trigger;
    for attempt in 1..=2 {
        let request = DeliveryRequest { id: "d1", trigger: &trigger, event: &event, attempt };
        let receipt = destination.deliver(&request).await.unwrap();
        assert_eq!(receipt.detail.as_deref(), Some(format!("delivery {attempt} of trigger numbers").as_str()));
    }
    manager.shutdown().await;
}
