//! Durable state through the real binary: what `ktrigger run` accepted survives SIGKILL (queued
//! webhook events, and ConfigMap updates made while it was down), a dedup window survives a
//! restart, a bad state file is moved aside, and a full disk refuses new events (503) without
//! losing any it acknowledged.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::cluster::Env;
use support::http_server::{Answer, TestServer};
use support::{Running, post, write_config};

/// A webhook source on `/in` delivering to `receiver` with quick retries, optionally with dedup.
fn config(receiver: &TestServer, dedup: bool) -> String {
    let dedup = if dedup { "\n      dedup: {key: \"string(object.key)\", window: 10m}" } else { "" };
    format!(
        r#"
apiVersion: ktrigger.dev/v1alpha1
kind: TriggerService
metadata: {{name: durable}}
spec:
  triggers:
    - name: relay
      source: {{type: webhook, properties: {{path: /in}}}}{dedup}
      destinations:
        - type: webhook
          properties: {{url: "{url}"}}
          retry: {{maxAttempts: 1000, backoff: 200ms, maxBackoff: 1s}}
          ordering: perObject
"#,
        url = receiver.url()
    )
}

/// Starts `ktrigger run` on `config_path` with its state in `state`.
fn start(config_path: &Path, state: &Path) -> Running {
    Running::start(&["-f", config_path.to_str().unwrap(), "--state-dir", state.to_str().unwrap()])
}

/// The CloudEvents the receiver accepted: `(id, the event's object)` in arrival order.
fn received(receiver: &TestServer) -> Vec<(String, Value)> {
    receiver
        .requests()
        .iter()
        .filter_map(|request| request.split_once("\r\n\r\n"))
        .filter_map(|(_, body)| serde_json::from_str::<Value>(body).ok())
        .map(|event| (event["id"].as_str().unwrap_or_default().to_string(), event["data"]["object"].clone()))
        .collect()
}

fn post_event(running: &Running, body: &Value) -> (u16, Value) {
    let (status, answer) = post(&format!("{}/in", running.webhook_url()), &[], &body.to_string());
    (status, serde_json::from_str(&answer).unwrap_or(Value::Null))
}

#[test]
fn a_receiver_down_for_30s_across_a_sigkill_gets_all_200_events_in_order_per_object() {
    let receiver = TestServer::start(Answer::Unavailable);
    let (_dir, path) = write_config(&config(&receiver, false));
    let state = tempfile::tempdir().unwrap();
    let down_since = Instant::now();
    let first = start(&path, state.path());
    // Ten objects (by `metadata.uid`, for `ordering: perObject`), twenty changes each.
    let events: Vec<Value> = (0..200)
        .map(|n| json!({"metadata": {"uid": format!("o{}", n % 10)}, "object": format!("o{}", n % 10), "seq": n / 10}))
        .collect();
    for event in &events[..100] {
        let (status, answer) = post_event(&first, event);
        assert_eq!((status, &answer["fired"]), (202, &json!(true)), "{answer}");
    }
    first.kill();
    let second = start(&path, state.path());
    second.stderr.wait_for("continuing stored deliveries", Duration::from_secs(10));
    for event in &events[100..] {
        let (status, answer) = post_event(&second, event);
        assert_eq!((status, &answer["fired"]), (202, &json!(true)), "{answer}");
    }
    std::thread::sleep(Duration::from_secs(30).saturating_sub(down_since.elapsed()));
    assert!(received(&receiver).is_empty(), "nothing gets through while the receiver is down");
    receiver.answer_with(Answer::Ok);
    receiver.wait_for_requests(200);
    std::thread::sleep(Duration::from_millis(500));
    let got = received(&receiver);
    let ids: BTreeSet<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    println!(
        "accepted 200 events across a SIGKILL; the receiver got {} deliveries, {} distinct ids",
        got.len(),
        ids.len()
    );
    assert_eq!(got.len(), 200, "each event once: nothing was in flight at the kill");
    assert_eq!(ids.len(), 200);
    let mut per_object: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (_, data) in &got {
        per_object.entry(data["object"].as_str().unwrap().to_string()).or_default().push(data["seq"].as_i64().unwrap());
    }
    for (object, seqs) in &per_object {
        assert_eq!(seqs, &(0..20).collect::<Vec<_>>(), "object {object} in order");
    }
    second.stop();
}

#[test]
fn a_dedup_key_firing_before_a_restart_does_not_fire_again_inside_its_window() {
    let receiver = TestServer::start(Answer::Ok);
    let (_dir, path) = write_config(&config(&receiver, true));
    let state = tempfile::tempdir().unwrap();
    let first = start(&path, state.path());
    assert_eq!(post_event(&first, &json!({"key": "a"})).1["fired"], true);
    receiver.wait_for_requests(1);
    first.stop();

    let second = start(&path, state.path());
    second.stderr.wait_for("dedup windows restored", Duration::from_secs(10));
    let (status, answer) = post_event(&second, &json!({"key": "a"}));
    assert_eq!((status, &answer["fired"]), (202, &json!(false)), "{answer}");
    assert_eq!(answer["triggers"][0]["outcome"], "duplicate", "{answer}");
    assert_eq!(post_event(&second, &json!({"key": "b"})).1["fired"], true, "another key fires");
    receiver.wait_for_requests(2);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(receiver.requests().len(), 2, "a once, b once");
    second.stop();
}

#[test]
fn a_corrupt_state_file_is_moved_aside_with_a_clear_message_and_a_fresh_one_used() {
    let receiver = TestServer::start(Answer::Ok);
    let (_dir, path) = write_config(&config(&receiver, false));
    let state = tempfile::tempdir().unwrap();
    let garbage = "not a state file ".repeat(4096);
    std::fs::write(state.path().join("state.redb"), &garbage).unwrap();
    let running = start(&path, state.path());
    let text = running.stderr.wait_for("moved to", Duration::from_secs(10));
    let line = text.lines().find(|l| l.contains("the state file could not be used; moved to ")).expect("a warning");
    assert!(line.contains("WARN"), "{line}");
    let aside = line.split("moved to ").nth(1).and_then(|rest| rest.split_whitespace().next()).unwrap();
    assert_eq!(std::fs::read_to_string(aside).unwrap(), garbage, "moved aside, not deleted: {line}");
    assert_eq!(post_event(&running, &json!({"n": 1})).1["fired"], true, "the fresh store works");
    receiver.wait_for_requests(1);
    running.stop();
}

#[test]
fn a_full_disk_answers_503_and_loses_nothing_it_acknowledged() {
    let receiver = TestServer::start(Answer::Unavailable);
    let (_dir, path) = write_config(&config(&receiver, false));
    let state = tempfile::tempdir().unwrap();
    // The file may grow to 1 MiB (a soft limit, which the test lifts later); SIGXFSZ is ignored
    // so that writes past it fail instead.
    let script = format!(
        "trap '' XFSZ; ulimit -S -f 1024; exec {} run -f {} --state-dir {} --webhook-addr 127.0.0.1:0",
        env!("CARGO_BIN_EXE_ktrigger"),
        path.display(),
        state.path().display()
    );
    let mut command = Command::new("bash");
    command.args(["-c", &script]);
    let running = Running::spawn_command(command, &["ktrigger running"]);
    let padding = "x".repeat(16 * 1024);
    let (mut accepted, mut refused) = (Vec::new(), 0);
    for n in 0..400 {
        let (status, answer) = post_event(&running, &json!({"n": n, "padding": padding}));
        match status {
            202 => accepted.push(n),
            503 => {
                refused += 1;
                assert!(answer["error"].as_str().unwrap().contains("could not be stored"), "{answer}");
                if refused >= 3 {
                    break;
                }
            }
            other => panic!("unexpected answer {other}: {answer}"),
        }
    }
    assert!(refused >= 3, "the full disk was never reached ({} accepted)", accepted.len());
    assert!(!accepted.is_empty());
    let limit = Command::new("prlimit")
        .args(["--pid", &running.id().to_string(), "--fsize=unlimited:"])
        .stdout(Stdio::null())
        .status()
        .expect("prlimit runs");
    assert!(limit.success(), "the file size limit is lifted");
    let (mut status, mut answer) = (0, Value::Null);
    for n in 1000..1100 {
        (status, answer) = post_event(&running, &json!({"n": n}));
        if status == 202 {
            accepted.push(n);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status, 202, "writes work again once there is room: {answer}");
    running.stderr.wait_for("state store writes work again", Duration::from_secs(10));
    receiver.answer_with(Answer::Ok);
    // Refused events may be delivered too (at least once): wait for the acknowledged ones.
    let delivered =
        || -> BTreeSet<i64> { received(&receiver).iter().map(|(_, data)| data["n"].as_i64().unwrap()).collect() };
    let start = Instant::now();
    while !accepted.iter().all(|n| delivered().contains(n)) && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let delivered = delivered();
    println!("disk full after {} events; {refused} refused with 503; all acknowledged ones delivered", accepted.len());
    for n in &accepted {
        assert!(delivered.contains(n), "acknowledged event {n} was delivered");
    }
    running.stop();
}

/// A resource-watcher trigger on the test namespace's ConfigMaps, updates only, to `receiver`.
fn configmap_config(namespace: &str, receiver: &TestServer) -> String {
    format!(
        r#"
apiVersion: ktrigger.dev/v1alpha1
kind: TriggerService
metadata: {{name: durable}}
spec:
  triggers:
    - name: updates
      source:
        type: resource-watcher
        properties: {{apiVersion: v1, kind: ConfigMap, namespace: {namespace}, events: [update]}}
      destinations:
        - type: webhook
          properties: {{url: "{url}"}}
          retry: {{maxAttempts: 1000, backoff: 200ms, maxBackoff: 1s}}
          ordering: perObject
"#,
        url = receiver.url()
    )
}

#[test]
fn sigkill_five_times_during_1000_configmap_updates_loses_none_and_repeats_only_with_the_same_id() {
    const OBJECTS: usize = 1000;
    let env = Env::new("durable-cm");
    let receiver = TestServer::start(Answer::Ok);
    for n in 0..OBJECTS {
        env.create_configmap(&format!("cm-{n:04}"), json!({}));
    }
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_str().unwrap();
    let config = configmap_config(&env.namespace, &receiver);
    let extra = ["--state-dir", state_dir];
    let (first, _dir) = env.run(&config, &extra, 1);
    let mut running = Some(first);
    let updated = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for n in 0..OBJECTS {
                env.set_data(&format!("cm-{n:04}"), "updated");
                updated.store(n + 1, std::sync::atomic::Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        for kill in 1..=5 {
            let target = kill * OBJECTS / 6;
            while updated.load(std::sync::atomic::Ordering::SeqCst) < target {
                std::thread::sleep(Duration::from_millis(5));
            }
            running.take().expect("running").kill();
            let restarted = Instant::now();
            let (next, dir) = env.run(&config, &extra, 1);
            println!("kill {kill} after {target} updates; running again (watch synced) in {:?}", restarted.elapsed());
            running = Some(next);
            drop(dir);
        }
    });
    let start = Instant::now();
    let names = || -> BTreeMap<String, BTreeSet<String>> {
        let mut ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (id, object) in received(&receiver) {
            ids.entry(object["metadata"]["name"].as_str().unwrap_or_default().to_string()).or_default().insert(id);
        }
        ids
    };
    while names().len() < OBJECTS && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    let ids = names();
    let deliveries = received(&receiver).len();
    println!(
        "{OBJECTS} updates, 5 SIGKILLs: {deliveries} deliveries of {} distinct updates, {} repeats",
        ids.len(),
        deliveries - ids.len()
    );
    let missing: Vec<String> =
        (0..OBJECTS).map(|n| format!("cm-{n:04}")).filter(|name| !ids.contains_key(name)).collect();
    assert!(missing.is_empty(), "updates never delivered: {missing:?}");
    for (name, seen) in &ids {
        assert_eq!(seen.len(), 1, "{name}: every repeat carries the id of its first attempt: {seen:?}");
    }
    running.expect("running").stop();
}
