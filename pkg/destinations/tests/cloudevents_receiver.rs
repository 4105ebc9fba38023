//! The `webhook` destination against the official CloudEvents SDK: a Python receiver
//! (`tests/receivers/cloudevents_receiver.py`) that accepts only what the SDK parses.
//!
//! Needs `python3` with the packages of `tests/requirements.txt`; fails (never skips) without them.

#[path = "../../../tests/support/python.rs"]
mod support;

use std::sync::Arc;

use ktrigger_core::{BuildContext, DeliveryError, DeliveryRequest, Destination, Event, Registry, TriggerId, rfc3339};
use serde_json::{Value, json};
use support::{PythonServer, json_lines};

/// The receiver process; killed when dropped.
struct PythonReceiver(PythonServer);

impl PythonReceiver {
    fn start() -> PythonReceiver {
        PythonReceiver(PythonServer::start(
            "cloudevents_receiver.py",
            "import cloudevents",
            "`cloudevents` is",
            "events.jsonl",
            &[],
        ))
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/events", self.0.port)
    }

    /// The events the receiver accepted, one JSON object each.
    fn accepted(&self) -> Vec<Value> {
        json_lines(&self.0.output)
    }
}

fn trigger() -> TriggerId {
    TriggerId { namespace: "apps".into(), service: "restart-doctor".into(), trigger: "crashloop".into() }
}

fn webhook(properties: Value) -> Arc<dyn Destination> {
    let mut registry = Registry::default();
    ktrigger_destinations::register(&mut registry);
    let factory = registry.destination("webhook").expect("webhook is registered");
    factory.build(&properties, &BuildContext::new(trigger())).unwrap()
}

fn pod_event() -> Event {
    let mut event = Event::new(
        "resource-watcher",
        "update",
        json!({"metadata": {"name": "web-0", "namespace": "apps"}, "status": {"restartCount": 4}}),
    );
    event.old_object = Some(json!({"metadata": {"name": "web-0", "namespace": "apps"}, "status": {"restartCount": 3}}));
    event
}

#[tokio::test]
async fn the_sdk_accepts_structured_and_binary_events() {
    let receiver = PythonReceiver::start();
    let trigger = trigger();
    let event = pod_event();

    let structured = webhook(json!({"url": receiver.url()}));
    let request = DeliveryRequest { id: "delivery-structured", trigger: &trigger, event: &event, attempt: 1 };
    let receipt = structured.deliver(&request).await.unwrap();
    assert_eq!(receipt.detail.as_deref(), Some("HTTP 200"));

    let binary = webhook(json!({
        "url": receiver.url(),
        "body": r#"{"pod": "{{ object.metadata.name }}", "restarts": {{ object.status.restartCount }}}"#,
    }));
    let request = DeliveryRequest { id: "delivery-binary", trigger: &trigger, event: &event, attempt: 1 };
    binary.deliver(&request).await.unwrap();

    let accepted = receiver.accepted();
    assert_eq!(accepted.len(), 2, "{accepted:?}");

    let first = &accepted[0];
    assert_eq!(first["specversion"], "1.0");
    assert_eq!(first["id"], "delivery-structured");
    assert_eq!(first["type"], "dev.ktrigger.update");
    assert_eq!(first["source"], "ktrigger/apps/restart-doctor/crashloop");
    assert_eq!(first["subject"], "web-0");
    assert_eq!(first["time"], rfc3339(event.meta.time));
    assert_eq!(first["datacontenttype"], "application/json");
    assert_eq!(first["data"]["object"], event.object);
    assert_eq!(first["data"]["oldObject"]["status"]["restartCount"], 3);
    assert_eq!(first["data"]["event"]["id"], event.meta.id);
    assert_eq!(first["data"]["event"]["trigger"], "crashloop");

    let second = &accepted[1];
    assert_eq!(second["id"], "delivery-binary");
    assert_eq!(second["type"], "dev.ktrigger.update");
    assert_eq!(second["source"], "ktrigger/apps/restart-doctor/crashloop");
    assert_eq!(second["data"], json!({"pod": "web-0", "restarts": 4}));
}

#[tokio::test]
async fn the_sdk_rejects_what_is_not_a_cloudevent() {
    let receiver = PythonReceiver::start();
    let trigger = trigger();
    let event = pod_event();
    let raw = webhook(json!({"url": receiver.url(), "format": "raw"}));
    let request = DeliveryRequest { id: "delivery-raw", trigger: &trigger, event: &event, attempt: 1 };
    match raw.deliver(&request).await.unwrap_err() {
        DeliveryError::Permanent { reason } => {
            assert!(reason.starts_with("HTTP 400 Bad Request: not a CloudEvent"), "{reason}")
        }
        other => panic!("expected a permanent error, got {other:?}"),
    }
    assert!(receiver.accepted().is_empty());
}
