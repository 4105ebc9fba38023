//! OpenTelemetry tracing end to end: `ktrigger run --otlp-endpoint` exports a trace per event
//! (filter, router, delivery attempt) to a real OTLP/HTTP receiver decoding it with the official
//! protobuf messages, and HTTP deliveries carry the W3C `traceparent` of their attempt.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::http_server::{Answer, TestServer};
use support::{PythonServer, Running, post, wait_for_lines, write_config};

fn relay_config(receiver: &str) -> String {
    format!(
        r#"
apiVersion: ktrigger.dev/v1alpha1
kind: TriggerService
metadata: {{name: relay, namespace: e2e}}
spec:
  triggers:
  - name: deploys
    source:
      type: webhook
      properties: {{path: /deploys}}
    filter: 'object.status == "failed"'
    destinations:
    - type: webhook
      properties: {{url: "{receiver}"}}
"#
    )
}

/// The value of header `name` in a raw HTTP request, if present.
fn header(request: &str, name: &str) -> Option<String> {
    let (head, _) = request.split_once("\r\n\r\n")?;
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim().to_string())
    })
}

fn span<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    let found: Vec<&Value> = spans.iter().filter(|span| span["name"] == name).collect();
    assert_eq!(found.len(), 1, "one {name} span expected: {spans:#?}");
    found[0]
}

#[test]
fn an_event_is_traced_through_filter_router_and_delivery_with_traceparent_sent() {
    let collector = PythonServer::start(
        "otlp_receiver.py",
        "import opentelemetry.proto.collector.trace.v1.trace_service_pb2",
        "`opentelemetry-proto` is",
        "spans.jsonl",
        &[],
    );
    let receiver = TestServer::start(Answer::Ok);
    let (_dir, path) = write_config(&relay_config(&receiver.url()));
    let endpoint = format!("http://127.0.0.1:{}", collector.port);
    let running = Running::start(&["-f", path.to_str().unwrap(), "--otlp-endpoint", &endpoint]);
    let url = format!("{}/deploys", running.webhook_url());
    assert_eq!(post(&url, &[("Content-Type", "application/json")], r#"{"status": "failed"}"#).0, 202);
    let requests = receiver.wait_for_requests(1);
    // Stopping flushes the spans still batched.
    assert_eq!(running.stop(), Some(0));
    let spans = wait_for_lines(&collector.output, 4, Duration::from_secs(10));
    assert_eq!(spans.len(), 4, "event, filter, router and one delivery attempt: {spans:#?}");

    let event = span(&spans, "event");
    let (filter, router, deliver) = (span(&spans, "filter"), span(&spans, "router"), span(&spans, "deliver"));
    for span in &spans {
        assert_eq!(span["service"], "ktrigger");
        assert_eq!(span["trace_id"], event["trace_id"], "one trace per event: {spans:#?}");
    }
    assert_eq!(event["parent_span_id"], "", "the event span is the root");
    for child in [filter, router, deliver] {
        assert_eq!(child["parent_span_id"], event["span_id"], "{child:#}");
    }
    assert_eq!(event["attributes"]["trigger"], "e2e/relay/deploys");
    assert_eq!(event["attributes"]["event.source"], "webhook");
    assert_eq!(filter["attributes"]["matched"], true);
    assert_eq!(router["attributes"]["decision"], "fire");
    assert_eq!(deliver["attributes"]["destination"], "webhook#0");
    assert_eq!(deliver["attributes"]["attempt"], 1);
    assert_eq!(deliver["attributes"]["outcome"], "delivered");

    let traceparent = header(&requests[0], "traceparent").expect("the delivery carries a traceparent");
    let trace_id = event["trace_id"].as_str().unwrap();
    let span_id = deliver["span_id"].as_str().unwrap();
    assert_eq!(traceparent, format!("00-{trace_id}-{span_id}-01"));
}

#[test]
fn without_an_otlp_endpoint_deliveries_carry_no_traceparent() {
    let receiver = TestServer::start(Answer::Ok);
    let (_dir, path) = write_config(&relay_config(&receiver.url()));
    let running = Running::start_with_env(&["-f", path.to_str().unwrap()], &[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]);
    let url = format!("{}/deploys", running.webhook_url());
    assert_eq!(post(&url, &[("Content-Type", "application/json")], r#"{"status": "failed"}"#).0, 202);
    let requests = receiver.wait_for_requests(1);
    assert_eq!(header(&requests[0], "traceparent"), None, "{}", requests[0]);
    assert_eq!(running.stop(), Some(0));
}
