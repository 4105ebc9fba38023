//! Benchmark of `ktrigger run` watching many objects: peak memory and event-to-delivery latency.
//!
//! Starts the test cluster, creates `--objects` ConfigMaps in 100 label groups, runs the
//! `ktrigger` binary given by `--ktrigger` with `--triggers` resource-watcher triggers on them
//! (each filtering one group, all sharing one watch, delivering to the log destination), then
//! updates `--updates` ConfigMaps one after the other and times each update from the moment its
//! request is sent until its delivery line is read from ktrigger's stdout. Prints the figures.
//! Run it through `hack/bench-watch.sh`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use ktrigger_testcluster::{Config, TestCluster};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const NAMESPACE: &str = "bench";
const GROUPS: usize = 100;

struct Options {
    ktrigger: String,
    objects: usize,
    triggers: usize,
    updates: usize,
}

fn options() -> Options {
    let mut options =
        Options { ktrigger: "target/release/ktrigger".into(), objects: 10_000, triggers: 100, updates: 1_000 };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).cloned().unwrap_or_default();
        let number = || value.parse::<usize>().unwrap_or_else(|_| panic!("{} needs a number", pair[0]));
        match pair[0].as_str() {
            "--ktrigger" => options.ktrigger = value.clone(),
            "--objects" => options.objects = number(),
            "--triggers" => options.triggers = number(),
            "--updates" => options.updates = number(),
            other => panic!("unknown option {other}; known: --ktrigger PATH --objects N --triggers N --updates N"),
        }
    }
    options
}

fn config(triggers: usize) -> String {
    let mut text = String::from(
        "apiVersion: ktrigger.dev/v1alpha1\nkind: TriggerService\nmetadata: {name: bench}\nspec:\n  triggers:\n",
    );
    for i in 0..triggers {
        text.push_str(&format!(
            "  - name: group-{i:03}\n    source:\n      type: resource-watcher\n      properties: {{apiVersion: v1, \
             kind: ConfigMap, namespace: {NAMESPACE}, events: [update]}}\n    filter: 'object.metadata.labels.group \
             == \"g{:03}\"'\n    destinations:\n    - type: log\n      properties: {{includeObject: false, \
             message: \"{{{{ object.metadata.name }}}} {{{{ object.data.v }}}}\"}}\n",
            i % GROUPS
        ));
    }
    text
}

/// Peak and current resident memory of a process, in KiB, from /proc.
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
    (field("VmHWM:"), field("VmRSS:"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    ktrigger_kube::ensure_crypto_provider();
    let options = options();
    let cluster = TestCluster::start_with(Config { event_log_capacity: 20_000, ..Config::default() }).await;
    let client = cluster.client().await;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);

    let started = Instant::now();
    futures::stream::iter(0..options.objects)
        .map(|i| {
            let api = configmaps.clone();
            async move {
                let body = json!({"metadata": {"name": format!("cm-{i:05}"), "labels": {"group": format!("g{:03}", i % GROUPS)}},
                                  "data": {"v": "0", "payload": "x".repeat(256)}});
                api.create(&PostParams::default(), &serde_json::from_value(body).unwrap()).await.unwrap();
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    eprintln!("created {} ConfigMaps in {:.1}s", options.objects, started.elapsed().as_secs_f64());

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    cluster.write_kubeconfig(&kubeconfig).unwrap();
    let file = dir.path().join("bench.yaml");
    std::fs::write(&file, config(options.triggers)).unwrap();
    let mut child = Command::new(&options.ktrigger)
        .args(["run", "-f", file.to_str().unwrap(), "--kubeconfig", kubeconfig.to_str().unwrap()])
        .args(["--webhook-addr", "127.0.0.1:0"])
        .env("KTRIGGER_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", options.ktrigger));
    let pid = child.id();

    let arrivals: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn({
        let arrivals = arrivals.clone();
        move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let now = Instant::now();
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line)
                    && let Some(message) = value["message"].as_str()
                {
                    arrivals.lock().unwrap().insert(message.to_string(), now);
                }
            }
        }
    });
    let stderr = child.stderr.take().unwrap();
    let (synced_tx, synced_rx) = std::sync::mpsc::channel();
    let stderr_lines: Arc<Mutex<Vec<String>>> = Arc::default();
    std::thread::spawn({
        let stderr_lines = stderr_lines.clone();
        move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("watch synced") {
                    let _ = synced_tx.send(());
                }
                stderr_lines.lock().unwrap().push(line);
            }
        }
    });
    let start = Instant::now();
    if synced_rx.recv_timeout(Duration::from_secs(120)).is_err() {
        let _ = child.kill();
        panic!("ktrigger did not sync its watch:\n{}", stderr_lines.lock().unwrap().join("\n"));
    }
    eprintln!("ktrigger synced {} objects in {:.2}s", options.objects, start.elapsed().as_secs_f64());
    let (after_sync_peak, _) = memory_kib(pid);

    let mut sent = Vec::with_capacity(options.updates);
    for i in 0..options.updates {
        // Only objects of groups some trigger filters for, so that every update is delivered.
        let mut index = (i * 7919) % options.objects;
        index -= index % GROUPS - (index % GROUPS) % options.triggers.clamp(1, GROUPS);
        let name = format!("cm-{index:05}");
        let value = format!("u{i}");
        let patch = Patch::Merge(json!({"data": {"v": value}}));
        let at = Instant::now();
        configmaps.patch(&name, &PatchParams::default(), &patch).await.unwrap();
        sent.push((format!("{name} {value}"), at, Instant::now()));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while arrivals.lock().unwrap().len() < options.updates {
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (peak, current) = memory_kib(pid);
    let arrived = arrivals.lock().unwrap().clone();
    let mut latencies: Vec<Duration> =
        sent.iter().filter_map(|(key, at, _)| arrived.get(key).map(|got| got.saturating_duration_since(*at))).collect();
    latencies.sort();
    let mut after_ack: Vec<Duration> = sent
        .iter()
        .filter_map(|(key, _, ack)| arrived.get(key).map(|got| got.saturating_duration_since(*ack)))
        .collect();
    after_ack.sort();
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let _ = child.wait();

    let watch_requests = cluster.watch_requests_for("configmaps");
    println!(
        "ktrigger run: {} ConfigMaps, {} triggers (one watch), {} updates",
        options.objects, options.triggers, options.updates
    );
    println!("  watch requests opened:   {watch_requests}");
    println!("  peak RSS after sync:     {:.1} MiB", after_sync_peak as f64 / 1024.0);
    println!("  peak RSS at the end:     {:.1} MiB (current {:.1} MiB)", peak as f64 / 1024.0, current as f64 / 1024.0);
    println!("  deliveries received:     {} of {}", latencies.len(), options.updates);
    if !latencies.is_empty() {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "  event-to-delivery, from the update request: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            ms(percentile(&latencies, 0.50)),
            ms(percentile(&latencies, 0.99)),
            ms(*latencies.last().unwrap())
        );
        println!(
            "  event-to-delivery, from the update reply:   p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            ms(percentile(&after_ack, 0.50)),
            ms(percentile(&after_ack, 0.99)),
            ms(*after_ack.last().unwrap())
        );
    }
}
