//! Benchmark of `ktrigger controller`: apply-to-first-delivery latency, memory with many
//! TriggerServices, and the API requests it makes while nothing changes.
//!
//! Starts the test cluster in this process, installs the TriggerService CRD, writes a kubeconfig
//! and runs the `ktrigger` binary given by `--ktrigger` as `ktrigger controller` with its stdout
//! piped (the `log` destination writes one JSON line per delivery there). Once `/readyz`
//! answers 200 it measures, in order:
//!
//! 1. **Apply → first delivery** (`--runs` times). Each run creates a fresh TriggerService with
//!    one `webhook` source on its own path and a `log` destination, then POSTs to that path in a
//!    tight loop (404 until the controller has started the trigger) until it answers 202. The
//!    time is taken from just before the create call until the delivery line, whose message
//!    carries the run number, is read from the controller's stdout. A webhook is used rather than
//!    a cron source because a cron schedule would add up to a second of waiting for the next
//!    tick; the POST loop adds at most its 2 ms pause. The TriggerService is deleted afterwards.
//! 2. **Memory** with `--services` TriggerServices of 10 triggers each (4 `cron` with a yearly
//!    schedule, so they never fire, and 6 `resource-watcher`s of ConfigMaps in 4 namespaces with
//!    different label selectors, filters and `log` destinations): once every status shows
//!    `readyTriggers: 10/10`, VmRSS and VmHWM of the controller from /proc, and the watch
//!    requests the cluster received (triggers on the same kind and namespace share a watch).
//! 3. **Requests at idle**: after statuses settle (two status intervals with no change), the
//!    requests the cluster receives during `--idle-seconds`, per minute, by method and path
//!    (namespaces and names replaced by placeholders). Status patches here mean the controller
//!    rewrites statuses that did not change.
//! 4. **Shutdown**: SIGTERM, the time to exit and the exit code.
//!
//! Run it through `hack/bench-controller.sh`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use ktrigger_api::TriggerService;
use ktrigger_testcluster::{Config, TestCluster};
use kube::CustomResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};

const NAMESPACE: &str = "bench";
const WATCHED_NAMESPACES: usize = 4;
const STATUS_INTERVAL: Duration = Duration::from_secs(5);

struct Options {
    ktrigger: String,
    runs: usize,
    services: usize,
    idle_seconds: u64,
}

fn options() -> Options {
    let mut options = Options { ktrigger: "target/release/ktrigger".into(), runs: 20, services: 100, idle_seconds: 60 };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).cloned().unwrap_or_default();
        let number = || value.parse::<usize>().unwrap_or_else(|_| panic!("{} needs a number", pair[0]));
        match pair[0].as_str() {
            "--ktrigger" => options.ktrigger = value.clone(),
            "--runs" => options.runs = number(),
            "--services" => options.services = number(),
            "--idle-seconds" => options.idle_seconds = number() as u64,
            other => panic!("unknown option {other}; known: --ktrigger PATH --runs N --services N --idle-seconds N"),
        }
    }
    options
}

/// A TriggerService with one webhook trigger on `/bench/run-{run}` delivering to the log.
fn webhook_service(run: usize) -> TriggerService {
    serde_json::from_value(json!({
        "apiVersion": "ktrigger.dev/v1alpha1",
        "kind": "TriggerService",
        "metadata": {"name": format!("latency-{run:03}"), "namespace": NAMESPACE},
        "spec": {"triggers": [{
            "name": "hook",
            "source": {"type": "webhook", "properties": {"path": format!("/bench/run-{run}")}},
            "destinations": [{"type": "log", "properties": {"includeObject": false, "message": "run {{ object.run }}"}}]
        }]}
    }))
    .unwrap()
}

/// A TriggerService with 10 triggers: 4 yearly crons and 6 ConfigMap watchers.
fn idle_service(index: usize) -> TriggerService {
    let mut triggers = Vec::new();
    for t in 0..4 {
        triggers.push(json!({
            "name": format!("yearly-{t}"),
            "source": {"type": "cron", "properties": {"schedule": format!("{t} 0 1 1 *"), "timeZone": "UTC"}},
            "destinations": [{"type": "log", "properties": {"includeObject": false, "message": "new year"}}]
        }));
    }
    for t in 0..6 {
        let namespace = format!("team-{}", (index + t) % WATCHED_NAMESPACES);
        let mut properties = json!({"apiVersion": "v1", "kind": "ConfigMap", "namespace": namespace});
        match t % 3 {
            0 => properties["labelSelector"] = json!(format!("app=svc-{index},tier in (api,db)")),
            1 => properties["matchingLabels"] = json!({"app": format!("svc-{index}"), "trigger": format!("t{t}")}),
            _ => properties["events"] = json!(["create", "delete"]),
        }
        let filter = match t % 3 {
            0 => format!("object.data.level == \"high\" && object.metadata.name.startsWith(\"svc-{index}\")"),
            1 => "has(object.data.owner)".to_string(),
            _ => format!("event.type == \"delete\" && object.metadata.labels.team == \"t{}\"", index % 10),
        };
        triggers.push(json!({
            "name": format!("watch-{t}"),
            "source": {"type": "resource-watcher", "properties": properties},
            "filter": filter,
            "destinations": [{"type": "log", "properties": {
                "includeObject": t % 2 == 0,
                "message": format!("{{{{ event.type }}}} {{{{ object.metadata.name }}}} (service {index}, trigger {t})")
            }}]
        }));
    }
    serde_json::from_value(json!({
        "apiVersion": "ktrigger.dev/v1alpha1",
        "kind": "TriggerService",
        "metadata": {"name": format!("idle-{index:03}"), "namespace": NAMESPACE},
        "spec": {"triggers": triggers}
    }))
    .unwrap()
}

/// A free port on 127.0.0.1 (bound and released; another process could take it meanwhile).
fn free_address() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// Sends one HTTP/1.1 request and returns the status code, or None if the connection failed.
fn http_status(address: SocketAddr, method: &str, path: &str, body: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.split_whitespace().nth(1)?.parse().ok()
}

/// Resident memory of a process from /proc: (VmRSS, VmHWM) in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `GET /api/v1/namespaces/team-1/configmaps?watch=true&...` becomes
/// `GET /api/v1/namespaces/{ns}/configmaps (watch)`; names become `{name}`.
fn normalize(method: &str, uri: &str) -> String {
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    // /api/v1/... or /apis/group/version/...; anything else (discovery, /version) stays as it is.
    let prefix = match segments.first() {
        Some(&"api") => 2,
        Some(&"apis") => 3,
        _ => segments.len(),
    };
    let mut out: Vec<String> = segments.iter().take(prefix).map(|s| s.to_string()).collect();
    let mut rest = &segments[prefix.min(segments.len())..];
    if rest.len() >= 3 && rest[0] == "namespaces" {
        out.extend(["namespaces".to_string(), "{ns}".to_string()]);
        rest = &rest[2..];
    }
    for (i, segment) in rest.iter().enumerate() {
        out.push(if i == 1 { "{name}".to_string() } else { segment.to_string() });
    }
    let kind = if query.split('&').any(|p| p == "watch=true" || p == "watch=1") {
        " (watch)"
    } else if method == "GET" && rest.len() == 1 {
        " (list)"
    } else {
        ""
    };
    format!("{method} /{}{kind}", out.join("/"))
}

/// The controller process and what it printed.
struct Controller {
    child: Child,
    deliveries: Receiver<(String, Instant)>,
    stderr: Arc<Mutex<Vec<String>>>,
    webhook: SocketAddr,
    health: SocketAddr,
}

fn start_controller(ktrigger: &str, kubeconfig: &std::path::Path) -> Controller {
    let (health, metrics) = (free_address(), free_address());
    let mut child = Command::new(ktrigger)
        .args(["controller", "--kubeconfig", kubeconfig.to_str().unwrap(), "--webhook-addr", "127.0.0.1:0"])
        .args(["--health-addr", &health.to_string(), "--metrics-addr", &metrics.to_string()])
        .args(["--status-interval", &format!("{}s", STATUS_INTERVAL.as_secs())])
        .env("KTRIGGER_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {ktrigger}: {e}"));

    let (delivery_tx, deliveries) = channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let now = Instant::now();
            if let Ok(value) = serde_json::from_str::<Value>(&line)
                && let Some(message) = value["message"].as_str()
            {
                let _ = delivery_tx.send((message.to_string(), now));
            }
        }
    });
    let (address_tx, address_rx) = channel();
    let stderr_lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn({
        let stderr_lines = stderr_lines.clone();
        move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(address) = line.strip_prefix("webhook listener on http://") {
                    let _ = address_tx.send(address.trim().parse::<SocketAddr>().unwrap());
                }
                stderr_lines.lock().unwrap().push(line);
            }
        }
    });
    let Ok(webhook) = address_rx.recv_timeout(Duration::from_secs(30)) else {
        let _ = child.kill();
        panic!("the controller did not print its webhook address:\n{}", stderr_lines.lock().unwrap().join("\n"));
    };
    Controller { child, deliveries, stderr: stderr_lines, webhook, health }
}

impl Controller {
    fn fail(&mut self, what: &str) -> ! {
        let _ = self.child.kill();
        panic!("{what}; controller stderr:\n{}", self.stderr.lock().unwrap().join("\n"));
    }

    /// The next delivery line whose message is `message`, skipping others; None after `timeout`.
    fn wait_delivery(&self, message: &str, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.deliveries.recv_timeout(left) {
                Ok((got, at)) if got == message => return Some(at),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }
}

/// Lists the bench TriggerServices until `done` holds for the list, or `timeout` passes.
async fn wait_services(api: &Api<TriggerService>, timeout: Duration, done: impl Fn(&[TriggerService]) -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(list) = api.list(&ListParams::default()).await
            && done(&list.items)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

fn all_ready(items: &[TriggerService], count: usize) -> bool {
    let ready = |s: &TriggerService| s.status.as_ref().and_then(|st| st.ready_triggers.as_deref()) == Some("10/10");
    items.iter().filter(|s| ready(s)).count() >= count
}

#[tokio::main]
async fn main() {
    let options = options();
    let cluster = TestCluster::start_with(Config { event_log_capacity: 50_000, ..Config::default() }).await;
    let client = cluster.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &TriggerService::crd()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    cluster.write_kubeconfig(&kubeconfig).unwrap();

    let started = Instant::now();
    let mut controller = start_controller(&options.ktrigger, &kubeconfig);
    let pid = controller.child.id();
    while http_status(controller.health, "GET", "/readyz", "") != Some(200) {
        if started.elapsed() > Duration::from_secs(60) {
            controller.fail("/readyz did not answer 200 within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ready_after = started.elapsed();
    let (rss_empty, _) = memory_kib(pid);

    // 1. Apply -> first delivery.
    let services: Api<TriggerService> = Api::namespaced(client.clone(), NAMESPACE);
    let mut to_delivery = Vec::new();
    let mut to_accepted = Vec::new();
    let mut attempts = Vec::new();
    for run in 0..options.runs {
        let path = format!("/bench/run-{run}");
        let body = json!({"run": run}).to_string();
        let start = Instant::now();
        services.create(&PostParams::default(), &webhook_service(run)).await.unwrap();
        let webhook = controller.webhook;
        let accepted = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut tries = 0;
            while Instant::now() < deadline {
                tries += 1;
                if http_status(webhook, "POST", &path, &body) == Some(202) {
                    return Some((Instant::now(), tries));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            None
        })
        .await
        .unwrap();
        let Some((accepted, tries)) = accepted else {
            controller.fail(&format!("run {run}: the webhook never answered 202"))
        };
        let Some(delivered) = controller.wait_delivery(&format!("run {run}"), Duration::from_secs(30)) else {
            controller.fail(&format!("run {run}: no delivery line"))
        };
        to_accepted.push(accepted - start);
        attempts.push(tries);
        to_delivery.push(delivered - start);
        services.delete(&format!("latency-{run:03}"), &DeleteParams::default()).await.unwrap();
    }
    to_accepted.sort();
    to_delivery.sort();
    let first_try = attempts.iter().filter(|&&n| n == 1).count();

    // 2. Memory with many TriggerServices.
    let watches_before = cluster.watch_requests();
    let configmap_watches_before = cluster.watch_requests_for("configmaps");
    let created = Instant::now();
    for index in 0..options.services {
        services.create(&PostParams::default(), &idle_service(index)).await.unwrap();
    }
    if !wait_services(&services, Duration::from_secs(300), |items| all_ready(items, options.services)).await {
        controller.fail("not every TriggerService reached readyTriggers 10/10 within 300 s");
    }
    let all_ready_after = created.elapsed();
    let (rss, hwm) = memory_kib(pid);
    let watches = cluster.watch_requests() - watches_before;
    let configmap_watches = cluster.watch_requests_for("configmaps") - configmap_watches_before;
    let open_configmap_watches = cluster.open_watches_for("configmaps");

    // 3. Requests at idle: first wait until two status intervals pass without a status write.
    let settle_started = Instant::now();
    let is_status_write = |(method, uri): &(String, String)| method != "GET" && uri.contains("/status");
    let mut seen = cluster.request_log().len();
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < 2 * STATUS_INTERVAL && settle_started.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let log = cluster.request_log();
        if log[seen..].iter().any(is_status_write) {
            quiet_since = Instant::now();
        }
        seen = log.len();
    }
    let settled = quiet_since.elapsed() >= 2 * STATUS_INTERVAL;
    let before = cluster.request_log().len();
    tokio::time::sleep(Duration::from_secs(options.idle_seconds)).await;
    let idle: Vec<(String, String)> = cluster.request_log()[before..].to_vec();
    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for (method, uri) in &idle {
        *by_kind.entry(normalize(method, uri)).or_default() += 1;
    }
    let per_minute = |n: usize| n as f64 * 60.0 / options.idle_seconds.max(1) as f64;

    // 4. Shutdown.
    let stopping = Instant::now();
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let status = controller.child.wait().unwrap();
    let stopped_in = stopping.elapsed();

    println!("ktrigger controller against the test cluster (status interval {}s)", STATUS_INTERVAL.as_secs());
    println!("  ready (/readyz 200) after start:  {:.0} ms, RSS {:.1} MiB", ms(ready_after), rss_empty as f64 / 1024.0);
    println!("apply -> first delivery ({} runs, webhook source, log destination):", options.runs);
    if !to_delivery.is_empty() {
        for (what, values) in [("create -> delivery line", &to_delivery), ("create -> webhook 202  ", &to_accepted)] {
            println!(
                "  {what}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                ms(percentile(values, 0.50)),
                ms(percentile(values, 0.99)),
                ms(*values.last().unwrap())
            );
        }
        println!(
            "  POSTs until 202: {first_try} of {} runs on the first try (trigger running before the create reply \
             was read), at most {}",
            options.runs,
            attempts.iter().max().unwrap()
        );
    }
    println!(
        "{} TriggerServices x 10 triggers (4 yearly cron, 6 ConfigMap watchers in {WATCHED_NAMESPACES} namespaces):",
        options.services
    );
    println!("  all readyTriggers 10/10 after:     {:.1} s", all_ready_after.as_secs_f64());
    println!("  controller VmRSS {:.1} MiB, VmHWM {:.1} MiB", rss as f64 / 1024.0, hwm as f64 / 1024.0);
    println!(
        "  watch requests while loading:      {watches} ({configmap_watches} on configmaps, {open_configmap_watches} configmap watches open)"
    );
    println!(
        "idle for {} s ({}): {} requests, {:.1} per minute",
        options.idle_seconds,
        if settled { "after statuses settled" } else { "statuses had NOT settled after 120 s" },
        idle.len(),
        per_minute(idle.len())
    );
    for (kind, count) in &by_kind {
        println!("  {:>7.1}/min  {kind}", per_minute(*count));
    }
    let status_writes = idle.iter().filter(|r| is_status_write(r)).count();
    if status_writes > 0 {
        println!("  FINDING: {status_writes} status writes at idle (statuses rewritten although nothing changed)");
    }
    println!("SIGTERM: exited in {:.0} ms with {status}", ms(stopped_in));
}
