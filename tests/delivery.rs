//! Real deliveries end to end: the `ktrigger` binary, inbound webhooks, cron, and a CloudEvents
//! receiver built on the official Python SDK.

mod support;

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use support::{CloudEventsReceiver, Running, post, write_config};

const JSON: (&str, &str) = ("Content-Type", "application/json");

fn relay_config(auth: &str, receiver: &str) -> String {
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
      properties:
        path: /deploys
        {auth}
    filter: 'object.status == "failed"'
    destinations:
    - type: webhook
      properties: {{url: "{receiver}"}}
"#
    )
}

#[test]
fn webhook_deliveries_are_valid_cloudevents() {
    let receiver = CloudEventsReceiver::start();
    let (_dir, path) = write_config(&relay_config("", &receiver.url));
    let running = Running::start(&["-f", path.to_str().unwrap()]);
    let url = format!("{}/deploys", running.webhook_url());
    assert_eq!(post(&url, &[JSON], r#"{"service": "cart", "status": "ok"}"#).0, 202);
    assert_eq!(post(&url, &[JSON], r#"{"service": "cart", "status": "failed", "attempts": 3}"#).0, 202);
    let events = receiver.wait_for(1, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(receiver.events().len(), 1, "the filtered-out payload must not be delivered");
    let event = &events[0];
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["type"], "dev.ktrigger.receive");
    assert_eq!(event["source"], "ktrigger/e2e/relay/deploys");
    assert_eq!(event["data"]["object"], serde_json::json!({"service": "cart", "status": "failed", "attempts": 3}));
    assert_eq!(event["data"]["event"]["trigger"], "deploys");
    assert!(!event["id"].as_str().unwrap().is_empty());
    assert_eq!(running.stop(), Some(0));
}

#[test]
fn inbound_bearer_auth_rejects_wrong_tokens_and_fires_nothing() {
    let receiver = CloudEventsReceiver::start();
    let auth = "auth: {type: bearer, tokenFrom: {env: E2E_HOOK_TOKEN}}";
    let (_dir, path) = write_config(&relay_config(auth, &receiver.url));
    let running = Running::start_with_env(&["-f", path.to_str().unwrap()], &[("E2E_HOOK_TOKEN", "let-me-in")]);
    let url = format!("{}/deploys", running.webhook_url());
    let body = r#"{"status": "failed", "n": 1}"#;
    assert_eq!(post(&url, &[JSON], body).0, 401);
    assert_eq!(post(&url, &[JSON, ("Authorization", "Bearer wrong")], body).0, 401);
    assert_eq!(post(&url, &[JSON, ("Authorization", "Bearer let-me-in")], r#"{"status": "failed", "n": 2}"#).0, 202);
    let events = receiver.wait_for(1, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(receiver.events().len(), 1);
    assert_eq!(events[0]["data"]["object"]["n"], 2);
    let stderr = running.stderr.text();
    assert!(!stderr.contains("let-me-in"), "the token must never be logged:\n{stderr}");
    assert_eq!(running.stop(), Some(0));
}

#[test]
fn inbound_hmac_signatures_are_checked() {
    let receiver = CloudEventsReceiver::start();
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("hook-secret");
    std::fs::write(&secret_file, "hush\n").unwrap();
    let auth = format!("auth: {{type: hmac, secretFrom: {{file: {}}}}}", secret_file.display());
    let (_cfg, path) = write_config(&relay_config(&auth, &receiver.url));
    let running = Running::start(&["-f", path.to_str().unwrap()]);
    let url = format!("{}/deploys", running.webhook_url());
    let body = r#"{"status": "failed", "signed": true}"#;
    let mut mac = Hmac::<Sha256>::new_from_slice(b"hush").unwrap();
    mac.update(body.as_bytes());
    let good = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let bad = format!("sha256={}", "0".repeat(64));
    assert_eq!(post(&url, &[JSON, ("X-Signature-256", &bad)], body).0, 401);
    assert_eq!(post(&url, &[JSON], body).0, 401);
    assert_eq!(post(&url, &[JSON, ("X-Signature-256", &good)], body).0, 202);
    let events = receiver.wait_for(1, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(receiver.events().len(), 1);
    assert_eq!(events[0]["data"]["object"]["signed"], true);
    assert_eq!(running.stop(), Some(0));
}

#[test]
fn cron_fires_on_schedule() {
    let config = r#"
triggers:
- name: every-second
  source: {type: cronjob, properties: {schedule: "* * * * * *"}}
  action: {type: log}
"#;
    let (_dir, path) = write_config(config);
    let running = Running::start(&["-f", path.to_str().unwrap()]);
    let stdout = running.stdout.wait_until("three fires", Duration::from_secs(30), |t| t.lines().count() >= 3);
    let times: Vec<chrono::DateTime<chrono::Utc>> = stdout
        .lines()
        .take(3)
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["object"]["scheduledTime"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(times[1] - times[0], chrono::TimeDelta::seconds(1), "{stdout}");
    assert_eq!(times[2] - times[1], chrono::TimeDelta::seconds(1), "{stdout}");
    assert_eq!(running.stop(), Some(0));
}

#[test]
fn undeliverable_events_are_dead_lettered_visibly() {
    let config = r#"
apiVersion: ktrigger.dev/v1alpha1
kind: TriggerService
metadata: {name: doomed}
spec:
  triggers:
  - name: to-nowhere
    source: {type: webhook, properties: {path: /in}}
    destinations:
    - type: webhook
      properties: {url: "http://127.0.0.1:9/closed-port"}
      retry: {maxAttempts: 2, backoff: 100ms, maxBackoff: 200ms}
    deadLetter: {type: log}
"#;
    let (_dir, path) = write_config(config);
    let running = Running::start(&["-f", path.to_str().unwrap()]);
    let url = format!("{}/in", running.webhook_url());
    assert_eq!(post(&url, &[JSON], r#"{"payload": 1}"#).0, 202);
    let stdout = running.stdout.wait_for("\"dead-letter\"", Duration::from_secs(30));
    let letter: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(letter["object"]["attempts"], 2);
    assert_eq!(letter["object"]["destination"], "webhook#0");
    assert_eq!(letter["object"]["object"], serde_json::json!({"payload": 1}));
    assert!(!letter["object"]["reason"].as_str().unwrap().is_empty());
    running.stderr.wait_for("delivery dead-lettered", Duration::from_secs(5));
    assert_eq!(running.stop(), Some(0));
}
