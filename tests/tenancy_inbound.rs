//! The inbound webhook listener shared by tenants, end to end with the real binary: each
//! TriggerService receives only the requests sent to its own prefix and accepted by its own auth,
//! repeated deliveries fire once, slow connections are cut, and a stop signal never waits past
//! `--shutdown-grace` for them.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::cluster::{Env, NamespaceGuard, WAIT};
use support::{Running, closed_by_server, get, hmac_signature, post, write_config};

/// Log destination lines of `trigger` (`namespace/service/trigger`) printed so far.
fn fired(running: &Running, trigger: &str) -> Vec<Value> {
    running
        .stdout
        .text()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["trigger"] == trigger)
        .collect()
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").trim_end_matches('/').to_string()
}

/// Opens `count` connections that send part of a request and then nothing: half stop in the
/// headers, half in the body.
fn slow_connections(addr: &str, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|i| {
            let addr = addr.parse().expect("the listener's address");
            let mut stream =
                TcpStream::connect_timeout(&addr, WAIT).expect("connects (waiting in the backlog is fine)");
            let partial: &[u8] = if i % 2 == 0 {
                b"POST /slow HTTP/1.1\r\nhost: x\r\nx-slow: "
            } else {
                b"POST /slow HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{\"a\":"
            };
            stream.write_all(partial).unwrap();
            stream
        })
        .collect()
}

/// Posts `body` with curl, giving up after `WAIT`; returns the status (0 when there was no answer).
fn post_within(url: &str, body: &str) -> u16 {
    let output = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", &WAIT.as_secs().to_string()])
        .args(["-X", "POST", url, "--data-binary", body])
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&output.stdout).trim().parse().unwrap_or(0)
}

fn tenant(service: &str, triggers: &str) -> String {
    format!(
        "apiVersion: ktrigger.dev/v1alpha1\nkind: TriggerService\nmetadata: {{name: {service}}}\nspec:\n  triggers:\n{triggers}"
    )
}

const SIGNED_AND_CONFLICTING: &str = r#"  - name: signed
    source:
      type: webhook
      properties:
        path: /hook
        auth:
          type: hmac
          secretFrom: {secretKeyRef: {name: hook-key, key: key}}
          deliveryIdHeader: X-Delivery
    destinations: [{type: log}]
  - name: open
    source: {type: webhook, properties: {path: /hook}}
    destinations: [{type: log}]
"#;

const OPEN: &str = r#"  - name: open
    source: {type: webhook, properties: {path: /hook}}
    destinations: [{type: log}]
"#;

#[test]
fn each_trigger_service_receives_only_its_own_prefix_and_its_own_auth() {
    let env = Env::new("inbound");
    env.install_trigger_service_crd();
    let other = format!("{}-b", env.namespace);
    let _other = NamespaceGuard::create(&env, &other);
    let running = env.start_controller(&["--watch-namespaces", &other], &[]);
    let key = format!("k-{}", support::cluster::uuid_suffix());
    env.apply(
        &env.namespace,
        &format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: hook-key}}\nstringData: {{key: {key}}}\n"),
    );
    env.apply(&env.namespace, &tenant("deploys", SIGNED_AND_CONFLICTING));
    env.apply(&other, &tenant("deploys", OPEN));

    env.wait_trigger("deploys", "signed", "the signed trigger loaded", |t| t["ready"] == true);
    let open = env.wait_trigger("deploys", "open", "the conflict reported", |t| t["ready"] == false);
    let expected = format!(
        "properties.path: /{ns}/deploys/hook is already used by trigger {ns}/deploys/signed with different auth",
        ns = env.namespace
    );
    assert!(open["lastError"].as_str().unwrap_or_default().contains(&expected), "{open:#}");

    let base = running.webhook_url();
    let url_a = format!("{base}/{}/deploys/hook", env.namespace);
    let url_b = format!("{base}/{other}/deploys/hook");
    let trigger_a = format!("{}/deploys/signed", env.namespace);
    let trigger_b = format!("{other}/deploys/open");
    let start = Instant::now();
    while post(&url_b, &[], r#"{"probe": true}"#).0 != 202 {
        assert!(start.elapsed() < WAIT, "team b's trigger never started");
        std::thread::sleep(Duration::from_millis(200));
    }
    running.stdout.wait_until("team b's probe", WAIT, |_| !fired(&running, &trigger_b).is_empty());

    let body = r#"{"secret-payload": "for-a"}"#;
    let signed = [("X-Signature-256", hmac_signature(&key, body)), ("X-Delivery", "d-1".to_string())];
    let signed: Vec<(&str, &str)> = signed.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, text) = post(&url_a, &signed, body);
    assert_eq!(code, 202, "{text}");
    let (code, text) = post(&url_a, &signed, body);
    assert_eq!((code, text.as_str()), (200, r#"{"duplicate":true}"#), "a repeated delivery is answered once");
    assert_eq!(post(&url_a, &[("X-Delivery", "d-2")], body).0, 401, "unsigned requests to a's path are refused");
    assert_eq!(post(&format!("{base}/hook"), &signed, body).0, 404, "no path outside the prefixes");
    running.stdout.wait_until("a's delivery", WAIT, |_| !fired(&running, &trigger_a).is_empty());

    // Let anything that would have fired show up before asserting that nothing else did.
    std::thread::sleep(Duration::from_millis(500));
    let a_lines = fired(&running, &trigger_a);
    assert_eq!(a_lines.len(), 1, "fired once for two identical deliveries: {a_lines:?}");
    assert!(
        !fired(&running, &trigger_b).iter().any(|line| line.to_string().contains("secret-payload")),
        "team a's signed payload never reaches team b"
    );
    assert!(
        !fired(&running, &format!("{}/deploys/open", env.namespace)).iter().any(|_| true),
        "the conflicting trigger never fires"
    );
    let (code, metrics) = get(&running.url_after("metrics on "));
    assert_eq!(code, 200);
    assert!(metrics.contains("ktrigger_webhook_rejected_total{reason=\"duplicate\"} 1\n"), "{metrics}");
    assert!(metrics.contains("ktrigger_webhook_rejected_total{reason=\"unauthorized\"} 1\n"), "{metrics}");

    // Removing the trigger that held the path lets the other one load in the same apply.
    env.apply(&env.namespace, &tenant("deploys", OPEN));
    env.wait_trigger("deploys", "open", "the freed path taken", |t| t["ready"] == true);
    let start = Instant::now();
    while post(&url_a, &[], r#"{"now": "open"}"#).0 != 202 {
        assert!(start.elapsed() < WAIT, "the path never reached the open trigger");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(running.stop(), Some(0));
}

const HOOK_FILE: &str = r#"
apiVersion: ktrigger.dev/v1alpha1
kind: TriggerService
metadata: {name: hooks}
spec:
  triggers:
  - name: in
    source: {type: webhook, properties: {path: /in}}
    destinations: [{type: log}]
"#;

#[test]
fn slow_header_and_slow_body_connections_are_cut_and_others_are_served() {
    let (_dir, path) = write_config(HOOK_FILE);
    let args = ["-f", path.to_str().unwrap(), "--webhook-header-timeout", "1s", "--webhook-body-timeout", "1s"];
    let running = Running::start(&[&args[..], &["--webhook-max-connections", "64"]].concat());
    let url = running.webhook_url();
    let slow = slow_connections(&host_port(&url), 600);

    assert_eq!(post_within(&format!("{url}/in"), r#"{"served": true}"#), 202, "served despite 600 slow connections");
    let cut = slow.iter().filter(|stream| closed_by_server(stream, Duration::from_secs(20))).count();
    assert_eq!(cut, 600, "every slow connection is closed by the server");
    running.stdout.wait_for("\"served\"", WAIT);
    assert_eq!(running.stop(), Some(0));
}

#[test]
fn sigterm_exits_within_the_grace_period_with_slow_connections_open() {
    let (_dir, path) = write_config(HOOK_FILE);
    let args = ["-f", path.to_str().unwrap(), "--shutdown-grace", "2s", "--webhook-max-connections", "1024"];
    let timeouts = ["--webhook-header-timeout", "1h", "--webhook-body-timeout", "1h", "--webhook-idle-timeout", "1h"];
    let running = Running::start(&[&args[..], &timeouts[..]].concat());
    let url = running.webhook_url();
    let slow = slow_connections(&host_port(&url), 600);
    assert_eq!(post_within(&format!("{url}/in"), "{}"), 202, "the listener serves despite the slow connections");

    let stopping = Instant::now();
    assert_eq!(running.stop(), Some(0));
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(5), "SIGTERM took {took:?} with a 2s grace period");
    let cut = slow.iter().filter(|stream| closed_by_server(stream, Duration::from_secs(5))).count();
    assert_eq!(cut, 600, "every slow connection was closed");
}

#[test]
fn the_controller_exits_within_the_grace_period_with_slow_connections_open() {
    let env = Env::new("inbound-stop");
    env.install_trigger_service_crd();
    let running = env.start_controller(&["--shutdown-grace", "2s", "--webhook-header-timeout", "1h"], &[]);
    let url = running.webhook_url();
    let slow = slow_connections(&host_port(&url), 300);
    std::thread::sleep(Duration::from_millis(200));

    let stopping = Instant::now();
    assert_eq!(running.stop(), Some(0));
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(5), "SIGTERM took {took:?} with a 2s grace period");
    let cut = slow.iter().filter(|stream| closed_by_server(stream, Duration::from_secs(5))).count();
    assert_eq!(cut, 300, "every slow connection was closed");
}
