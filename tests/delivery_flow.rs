//! How deliveries flow to a destination, end to end: several in flight at once, in order per
//! object, a hanging receiver holding only its own slot, a full queue making sources wait
//! (inbound webhooks answer 503 with Retry-After, a Kubernetes source pauses) instead of
//! dead-lettering, and batches. The receiver is the CloudEvents one built on the official SDK,
//! told by each event how long to take.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::cluster::{Env, WAIT};
use support::{CloudEventsReceiver, Running, write_config};

fn relay(receiver: &str, destination: &str) -> String {
    format!(
        r#"
triggers:
- name: relay
  source: {{type: webhook, properties: {{path: /in}}}}
  destinations:
  - type: webhook
    properties: {{url: "{receiver}"}}
    {destination}
"#
    )
}

/// Posts JSON `body` to `url`: the status and the Retry-After header, if any.
fn post_json(url: &str, body: &Value) -> (u16, Option<String>) {
    let output = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-D", "-", "-w", "%{http_code}", "-X", "POST", url])
        .args(["-H", "Content-Type: application/json", "--data-binary", &body.to_string()])
        .stderr(Stdio::null())
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let status = text.lines().last().and_then(|line| line.trim().parse().ok()).unwrap_or(0);
    let retry_after = text
        .lines()
        .find_map(|line| line.to_ascii_lowercase().strip_prefix("retry-after:").map(|v| v.trim().to_string()));
    (status, retry_after)
}

/// `(object uid, sequence, received, answered)` of each delivered event.
fn timeline(events: &[Value]) -> Vec<(String, i64, f64, f64)> {
    events
        .iter()
        .map(|event| {
            let object = &event["data"]["object"];
            (
                object["metadata"]["uid"].as_str().unwrap_or_default().to_string(),
                object["seq"].as_i64().unwrap_or(-1),
                event["_received"].as_f64().unwrap(),
                event["_answered"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn deliveries_of_one_object_never_overlap_nor_reorder_while_others_go_ahead() {
    let receiver = CloudEventsReceiver::start();
    let (_dir, path) = write_config(&relay(&receiver.url, "ordering: perObject\n    concurrency: 8"));
    let running = Running::start(&["-f", path.to_str().unwrap()]);
    let url = format!("{}/in", running.webhook_url());
    // Four objects, five changes each, interleaved; each answer takes half a second, longer
    // than posting the changes of the other objects in between.
    for seq in 0..5 {
        for uid in ["a", "b", "c", "d"] {
            let body = json!({"metadata": {"uid": uid}, "seq": seq, "delay": 0.5});
            assert_eq!(post_json(&url, &body).0, 202);
        }
    }
    let events = receiver.wait_for(20, WAIT);
    let timeline = timeline(&events);
    for uid in ["a", "b", "c", "d"] {
        let mine: Vec<_> = timeline.iter().filter(|(u, ..)| u == uid).collect();
        let mut by_arrival = mine.clone();
        by_arrival.sort_by(|x, y| x.2.total_cmp(&y.2));
        let order: Vec<i64> = by_arrival.iter().map(|(_, seq, ..)| *seq).collect();
        assert_eq!(order, [0, 1, 2, 3, 4], "{uid} arrived out of order: {by_arrival:?}");
        for pair in by_arrival.windows(2) {
            assert!(pair[1].2 >= pair[0].3, "{uid}: seq {} was sent before seq {} was answered", pair[1].1, pair[0].1);
        }
    }
    // Objects go ahead of each other: at some moment deliveries of different objects overlapped.
    let overlapping = timeline.iter().any(|x| timeline.iter().any(|y| x.0 != y.0 && y.2 < x.3 && x.2 < y.3));
    assert!(overlapping, "deliveries of different objects never overlapped: {timeline:?}");
    assert_eq!(running.stop(), Some(0));
}

#[test]
fn a_hanging_receiver_holds_only_its_own_slot() {
    let receiver = CloudEventsReceiver::start();
    let destination = "timeout: 60s\n    retry: {maxAttempts: 1}\n    concurrency: 4";
    let (_dir, path) = write_config(&relay(&receiver.url, destination));
    let running = Running::start(&["-f", path.to_str().unwrap()]);
    let url = format!("{}/in", running.webhook_url());
    assert_eq!(post_json(&url, &json!({"metadata": {"uid": "stuck"}, "hang": true})).0, 202);
    let started = Instant::now();
    for seq in 0..30 {
        assert_eq!(post_json(&url, &json!({"metadata": {"uid": format!("o{seq}")}, "seq": seq})).0, 202);
    }
    let events = receiver.wait_for(30, WAIT);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the others waited for the hanging one: {:?}",
        started.elapsed()
    );
    assert!(events.iter().all(|e| e["data"]["object"]["metadata"]["uid"] != "stuck"));
    running.kill();
}

#[test]
fn a_full_queue_answers_503_with_retry_after_and_dead_letters_nothing() {
    let receiver = CloudEventsReceiver::start();
    // With a dedup key: an event refused for want of room must fire when it comes again.
    let destination = "queueSize: 2\n    concurrency: 1\n  dedup: {key: 'string(object.seq)', window: 1h}";
    let (_dir, path) = write_config(&relay(&receiver.url, destination));
    let running = Running::start(&["-f", path.to_str().unwrap()]);
    let url = format!("{}/in", running.webhook_url());
    let body = |seq: i64| json!({"seq": seq, "delay": 1.0});
    let answers: Vec<(u16, Option<String>)> = (0..4).map(|seq| post_json(&url, &body(seq))).collect();
    assert_eq!(answers[0].0, 202);
    assert_eq!(answers[1].0, 202);
    assert_eq!(answers[2], (503, Some("1".to_string())), "the third finds the queue full: {answers:?}");
    assert_eq!(answers[3].0, 503);
    // The sender retries once there is room again.
    let started = Instant::now();
    for seq in 2..4 {
        loop {
            match post_json(&url, &body(seq)) {
                (202, _) => break,
                (503, Some(_)) => std::thread::sleep(Duration::from_millis(200)),
                other => panic!("unexpected answer {other:?}"),
            }
            assert!(started.elapsed() < WAIT, "no room for seq {seq}");
        }
    }
    let events = receiver.wait_for(4, WAIT);
    let mut seqs: Vec<i64> = events.iter().map(|e| e["data"]["object"]["seq"].as_i64().unwrap()).collect();
    seqs.sort();
    assert_eq!(seqs, [0, 1, 2, 3]);
    let stderr = running.stderr.text();
    assert!(!stderr.contains("dead-lettered"), "{stderr}");
    assert_eq!(running.stop(), Some(0));
}

#[test]
fn overflow_dead_letter_keeps_the_old_behaviour() {
    let receiver = CloudEventsReceiver::start();
    let destination = "queueSize: 1\n    concurrency: 1\n    overflow: deadLetter";
    let (_dir, path) = write_config(&relay(&receiver.url, destination));
    let running = Running::start(&["-f", path.to_str().unwrap()]);
    let url = format!("{}/in", running.webhook_url());
    assert_eq!(post_json(&url, &json!({"seq": 0, "delay": 1.0})).0, 202);
    let (status, _) = post_json(&url, &json!({"seq": 1}));
    assert_eq!(status, 503, "refused as before: stored nowhere");
    running.stderr.wait_for("delivery dead-lettered", WAIT);
    assert_eq!(running.stop(), Some(0));
}

#[test]
fn batches_go_as_cloudevents_batch_mode() {
    let receiver = CloudEventsReceiver::start();
    let destination = "batch: {maxEvents: 5, maxDelay: 10s}";
    let (_dir, path) = write_config(&relay(&receiver.url, destination));
    let running = Running::start(&["-f", path.to_str().unwrap()]);
    let url = format!("{}/in", running.webhook_url());
    for seq in 0..10 {
        assert_eq!(post_json(&url, &json!({"seq": seq})).0, 202);
    }
    let events = receiver.wait_for(10, WAIT);
    assert!(events.iter().all(|e| e["_batch"] == 5), "two full batches of five: {events:#?}");
    let mut ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10, "each event keeps its own delivery id");
    assert_eq!(running.stop(), Some(0));
}

#[test]
fn batch_is_refused_on_destinations_that_cannot_batch() {
    let config = r#"
triggers:
- name: chat
  source: {type: webhook, properties: {path: /in}}
  destinations:
  - type: slack
    properties: {webhookUrl: "https://hooks.slack.com/services/x"}
    batch: {maxEvents: 10}
"#;
    let (_dir, path) = write_config(config);
    let output = support::ktrigger().args(["validate", "-f", path.to_str().unwrap()]).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("chat"), "names the trigger: {text}");
    assert!(
        text.contains("destinations[0].batch: the slack destination cannot send several deliveries in one request"),
        "{text}"
    );
}

#[test]
fn a_kubernetes_source_pauses_on_a_full_queue_and_nothing_is_dead_lettered() {
    let env = Env::new("pause");
    let receiver = CloudEventsReceiver::start();
    let config = format!(
        r#"
apiVersion: ktrigger.dev/v1alpha1
kind: TriggerService
metadata: {{name: e2e}}
spec:
  triggers:
  - name: slow
    source:
      type: resource-watcher
      properties: {{apiVersion: v1, kind: ConfigMap, namespace: {ns}, events: [create]}}
    destinations:
    - type: webhook
      properties: {{url: "{url}"}}
      queueSize: 2
      concurrency: 1
"#,
        ns = env.namespace,
        url = receiver.url,
    );
    let (running, _dir) = env.run(&config, &[], 1);
    let configmaps = env.configmaps();
    for n in 0..8 {
        let body = serde_json::from_value(json!({
            "metadata": {"name": format!("cm-{n}")}, "data": {"delay": "0.3"},
        }))
        .unwrap();
        env.runtime.block_on(configmaps.create(&Default::default(), &body)).unwrap();
    }
    running.stderr.wait_for("the source waits for room", WAIT);
    let events = receiver.wait_for(8, WAIT);
    let mut names: Vec<&str> =
        events.iter().map(|e| e["data"]["object"]["metadata"]["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, (0..8).map(|n| format!("cm-{n}")).collect::<Vec<_>>());
    let stderr = running.stderr.text();
    assert!(!stderr.contains("dead-lettered"), "{stderr}");
    assert_eq!(running.stop(), Some(0));
}
