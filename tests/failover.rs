//! Two `ktrigger controller` replicas sharing one NATS JetStream: the leader is killed with
//! SIGKILL while its deliveries are still queued, and the replica taking the lease delivers them.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::cluster::{Env, WAIT};
use support::http_server::{Answer, TestServer};
use support::nats::NatsServer;
use support::{Running, get};

const UPDATES: usize = 500;
/// Update `n` sets the ConfigMap's `v` to `FIRST + n`, never to its initial `1`.
const FIRST: usize = 1000;

/// When each request arrived, the ConfigMap's `v` it carried, and its CloudEvents id.
fn received(receiver: &TestServer) -> Vec<(Instant, usize, String)> {
    receiver
        .timed_requests()
        .into_iter()
        .filter_map(|(at, request)| {
            let (_, body) = request.split_once("\r\n\r\n")?;
            let event: Value = serde_json::from_str(body).ok()?;
            let value = event["data"]["object"]["data"]["v"].as_str()?.parse().ok()?;
            Some((at, value, event["id"].as_str()?.to_string()))
        })
        .collect()
}

/// The `ktrigger_trigger_fired_total` of a replica: events it stored for delivery.
fn fired(replica: &Running) -> u64 {
    let (_, text) = get(&replica.url_after("metrics on "));
    text.lines()
        .filter(|line| line.starts_with("ktrigger_trigger_fired_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn wait_until(what: &str, check: impl Fn() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < WAIT * 2, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_replica_taking_the_lease_delivers_what_the_killed_leader_had_queued() {
    let nats = NatsServer::start();
    // A slow receiver, so that the leader still has deliveries queued when it is killed.
    let receiver = TestServer::start(Answer::OkAfter(Duration::from_millis(30)));
    let env = Env::new("failover");
    env.install_trigger_service_crd();
    env.create_configmap("watched", json!({}));
    let url = nats.url();
    let args = [
        "--leader-elect",
        "--lease-namespace",
        &env.namespace,
        "--lease-duration",
        "3s",
        "--egress-allow",
        "127.0.0.1/32",
        "--state",
        &url,
        "--state-ack-wait",
        "2s",
    ];
    let leader = env.start_controller(&args, &[]);
    leader.stderr.wait_for("leading (lease", WAIT);
    let follower = env.start_controller(&args, &[]);
    assert!(follower.stderr.text().contains("waiting to lead"), "{}", follower.stderr.text());
    env.apply(
        &env.namespace,
        &format!(
            r#"
apiVersion: ktrigger.dev/v1alpha1
kind: TriggerService
metadata: {{name: svc}}
spec:
  triggers:
  - name: updates
    source: {{type: resource-watcher, properties: {{apiVersion: v1, kind: ConfigMap, events: [update]}}}}
    filter: 'object.metadata.name == "watched"'
    destinations:
    - type: webhook
      properties: {{url: "{}"}}
      retry: {{maxAttempts: 10, backoff: 200ms}}
"#,
            receiver.url()
        ),
    );
    leader.stderr.wait_for("watch synced", WAIT);

    let half = UPDATES / 2;
    for n in 1..=half {
        env.set_data("watched", &(FIRST + n).to_string());
    }
    wait_until("the leader to store every update", || fired(&leader) >= half as u64);
    let killed_at = Instant::now();
    leader.kill();
    let delivered_by_leader = received(&receiver).len();
    assert!(delivered_by_leader < half, "the leader still had deliveries queued when it was killed");

    follower.stderr.wait_for("leading (lease", WAIT);
    follower.stderr.wait_for("watch synced", WAIT);
    for n in half + 1..=UPDATES {
        env.set_data("watched", &(FIRST + n).to_string());
    }
    wait_until("every update to arrive", || {
        received(&receiver).iter().map(|(_, value, _)| *value).collect::<BTreeSet<_>>().len() >= UPDATES
    });

    let requests = received(&receiver);
    let mut ids: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    for (_, value, id) in &requests {
        ids.entry(*value).or_default().insert(id.clone());
    }
    assert_eq!(ids.keys().copied().collect::<Vec<_>>(), (FIRST + 1..=FIRST + UPDATES).collect::<Vec<_>>());
    let reused: Vec<_> = ids.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(reused.is_empty(), "a duplicate carries the id of its first delivery: {reused:?}");
    let continued = requests.iter().filter(|(at, value, _)| *at > killed_at && *value <= FIRST + half).count();
    assert!(continued > 0, "the follower delivered the leader's queued updates");
    println!(
        "{UPDATES} updates: {delivered_by_leader} delivered by the leader before SIGKILL, {continued} of its queued \
         ones by the follower, {} duplicates (same id)",
        requests.len() - UPDATES
    );
}
