//! Benchmark of `ktrigger run` watching many objects: peak memory and event-to-delivery latency.
//!
//! Default mode (`--mode filters`): starts the test cluster, creates `--objects` ConfigMaps in 100
//! label groups, runs the `ktrigger` binary given by `--ktrigger` with `--triggers`
//! resource-watcher triggers on them (each filtering one group with CEL, delivering to the log
//! destination), then, once ktrigger has delivered a first update per kind and has gone idle
//! (its start-up work done), updates `--updates` ConfigMaps one after the other and times each
//! update from the moment its request is sent until its delivery line is read from ktrigger's
//! stdout.
//!
//! `--mode selectors`: the objects are spread over five kinds (ConfigMap, Secret, ServiceAccount,
//! LimitRange, Lease: kinds that no controller of a real cluster changes or deletes) and each
//! trigger has its own label selector (`shard=sN`) on one kind; the figures are the watches
//! ktrigger opened, its peak RSS and the same latencies.
//!
//! `--kubeconfig PATH` runs against that cluster (in a namespace of its own, deleted at the end)
//! instead of the test cluster; it first waits until the namespaces of earlier runs that are
//! being deleted are gone, so that their deletion does not load the server during the
//! measurement. Prints the figures. Run it through `hack/bench-watch.sh`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use ktrigger_testcluster::{Config, TestCluster};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, watcher};
use serde_json::json;

const NAMESPACE: &str = "bench";
/// Prefix of the namespaces made on a real API server.
const REAL_NAMESPACE_PREFIX: &str = "bench-watch-";
/// Longest wait for the namespaces of earlier runs to be deleted.
const EARLIER_RUNS_TIMEOUT: Duration = Duration::from_secs(600);
const GROUPS: usize = 100;

struct Options {
    ktrigger: String,
    objects: usize,
    triggers: usize,
    updates: usize,
    selectors: bool,
    kubeconfig: Option<String>,
}

/// The kinds of the selectors mode: (apiVersion, kind, plural).
const KINDS: [(&str, &str, &str); 5] = [
    ("v1", "ConfigMap", "configmaps"),
    ("v1", "Secret", "secrets"),
    ("v1", "ServiceAccount", "serviceaccounts"),
    ("v1", "LimitRange", "limitranges"),
    ("coordination.k8s.io/v1", "Lease", "leases"),
];

fn options() -> Options {
    let mut options = Options {
        ktrigger: "target/release/ktrigger".into(),
        objects: 10_000,
        triggers: 100,
        updates: 1_000,
        selectors: false,
        kubeconfig: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).cloned().unwrap_or_default();
        let number = || value.parse::<usize>().unwrap_or_else(|_| panic!("{} needs a number", pair[0]));
        match pair[0].as_str() {
            "--ktrigger" => options.ktrigger = value.clone(),
            "--objects" => options.objects = number(),
            "--triggers" => options.triggers = number(),
            "--updates" => options.updates = number(),
            "--kubeconfig" => options.kubeconfig = Some(value.clone()),
            "--mode" => match value.as_str() {
                "filters" => options.selectors = false,
                "selectors" => options.selectors = true,
                other => panic!("--mode {other}: filters or selectors"),
            },
            other => panic!(
                "unknown option {other}; known: --ktrigger PATH --objects N --triggers N --updates N \
                 --mode filters|selectors --kubeconfig PATH"
            ),
        }
    }
    options
}

fn config(options: &Options, namespace: &str) -> String {
    let mut text = String::from(
        "apiVersion: ktrigger.dev/v1alpha1\nkind: TriggerService\nmetadata: {name: bench}\nspec:\n  triggers:\n",
    );
    for i in 0..options.triggers {
        if options.selectors {
            let (api_version, kind, _) = KINDS[i % KINDS.len()];
            text.push_str(&format!(
                "  - name: selector-{i:04}\n    source:\n      type: resource-watcher\n      properties: {{apiVersion: \
                 {api_version}, kind: {kind}, namespace: {namespace}, events: [update], labelSelector: \"shard=s{}\"}}\n    \
                 destinations:\n    - type: log\n      properties: {{includeObject: false, message: \"{{{{ object.kind \
                 }}}}/{{{{ object.metadata.name }}}} {{{{ object.metadata.annotations.v }}}}\"}}\n",
                i / KINDS.len()
            ));
        } else {
            text.push_str(&format!(
                "  - name: group-{i:03}\n    source:\n      type: resource-watcher\n      properties: {{apiVersion: v1, \
                 kind: ConfigMap, namespace: {namespace}, events: [update]}}\n    filter: 'object.metadata.labels.group \
                 == \"g{:03}\"'\n    destinations:\n    - type: log\n      properties: {{includeObject: false, \
                 message: \"{{{{ object.metadata.name }}}} {{{{ object.data.v }}}}\"}}\n",
                i % GROUPS
            ));
        }
    }
    text
}

/// Shards (distinct selectors) per kind in the selectors mode.
fn shards(options: &Options) -> usize {
    (options.triggers / KINDS.len()).max(1)
}

/// Object `i`: its kind's index, name and body.
fn object(options: &Options, i: usize) -> (usize, String, serde_json::Value) {
    let name = format!("obj-{i:05}");
    if options.selectors {
        let kind = i % KINDS.len();
        let shard = (i / KINDS.len()) % shards(options);
        let (api_version, kind_name, _) = KINDS[kind];
        let body = json!({"apiVersion": api_version, "kind": kind_name, "metadata": {"name": name,
            "labels": {"shard": format!("s{shard}")}, "annotations": {"v": "0", "payload": "x".repeat(256)}}});
        (kind, name, body)
    } else {
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name,
            "labels": {"group": format!("g{:03}", i % GROUPS)}}, "data": {"v": "0", "payload": "x".repeat(256)}});
        (0, name, body)
    }
}

fn api_resource(index: usize) -> ApiResource {
    let (api_version, kind, plural) = KINDS[index];
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: api_version.into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// Peak and current resident memory of a process and, of the current, what is mapped from files
/// (the binary's code, mostly), in KiB, from /proc.
fn memory_kib(pid: u32) -> (u64, u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"), field("RssFile:"))
}

/// CPU time the process has used, in clock ticks (user and system), and the bytes it has
/// written to storage (the state store's commits).
fn activity(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces) start with the state, field 3;
    // utime and stime are fields 14 and 15.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks = after_name.split_whitespace().skip(11).take(2).filter_map(|v| v.parse::<u64>().ok()).sum();
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let written =
        io.lines().find_map(|line| line.strip_prefix("write_bytes:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    (ticks, written)
}

/// Waits until each of the processes `pids` has used no more than one clock tick of CPU and
/// written nothing to storage in each of three successive 100 ms periods (at most 60 s).
async fn wait_until_idle(pids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let sample = || pids.iter().map(|pid| activity(*pid)).collect::<Vec<(u64, u64)>>();
    let (mut last, mut quiet_periods) = (sample(), 0);
    while quiet_periods < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = sample();
        let quiet = now.iter().zip(&last).all(|(now, last)| now.0.saturating_sub(last.0) <= 1 && now.1 == last.1);
        quiet_periods = if quiet { quiet_periods + 1 } else { 0 };
        last = now;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// The ktrigger process, killed if the bench ends before stopping it (a failed request panics).
struct KilledOnDrop(std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits while namespaces of earlier runs are being deleted (their objects with them).
async fn wait_for_earlier_runs(client: &Client) {
    let namespaces = Api::<Namespace>::all(client.clone());
    let started = Instant::now();
    let mut told = false;
    loop {
        let list = namespaces.list(&Default::default()).await.unwrap();
        let deleting = list
            .items
            .iter()
            .filter(|ns| {
                ns.metadata.name.as_deref().is_some_and(|name| name.starts_with(REAL_NAMESPACE_PREFIX))
                    && ns.metadata.deletion_timestamp.is_some()
            })
            .count();
        if deleting == 0 {
            return;
        }
        assert!(
            started.elapsed() < EARLIER_RUNS_TIMEOUT,
            "{deleting} namespace(s) of earlier runs still being deleted after {EARLIER_RUNS_TIMEOUT:?}"
        );
        if !told {
            eprintln!("waiting for {deleting} namespace(s) of earlier runs to be deleted");
            told = true;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[tokio::main]
async fn main() {
    ktrigger_kube::ensure_crypto_provider();
    let options = options();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let (cluster, client, namespace) = match &options.kubeconfig {
        Some(path) => {
            std::fs::copy(path, &kubeconfig).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
            let config = kube::Config::from_custom_kubeconfig(
                kube::config::Kubeconfig::read_from(path).unwrap(),
                &Default::default(),
            )
            .await
            .unwrap();
            let client = Client::try_from(config).unwrap();
            wait_for_earlier_runs(&client).await;
            let namespace = format!("{REAL_NAMESPACE_PREFIX}{}", std::process::id());
            let body = serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap();
            Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &body).await.unwrap();
            (None, client, namespace)
        }
        None => {
            let cluster = TestCluster::start_with(Config { event_log_capacity: 20_000, ..Config::default() }).await;
            cluster.write_kubeconfig(&kubeconfig).unwrap();
            let client = cluster.client().await;
            (Some(cluster), client, NAMESPACE.to_string())
        }
    };
    let apis: Vec<Api<DynamicObject>> =
        (0..KINDS.len()).map(|k| Api::namespaced_with(client.clone(), &namespace, &api_resource(k))).collect();

    let started = Instant::now();
    futures::stream::iter(0..options.objects)
        .map(|i| {
            let (kind, _, body) = object(&options, i);
            let api = apis[kind].clone();
            async move {
                api.create(&PostParams::default(), &serde_json::from_value(body).unwrap()).await.unwrap();
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let kinds = if options.selectors { KINDS.len() } else { 1 };
    eprintln!("created {} objects of {kinds} kind(s) in {:.1}s", options.objects, started.elapsed().as_secs_f64());

    let file = dir.path().join("bench.yaml");
    std::fs::write(&file, config(&options, &namespace)).unwrap();
    let mut child = KilledOnDrop(
        Command::new(&options.ktrigger)
            .args(["run", "-f", file.to_str().unwrap(), "--kubeconfig", kubeconfig.to_str().unwrap()])
            .args(["--webhook-addr", "127.0.0.1:0"])
            // A state of its own: every run is a first start.
            .args(["--state-dir", dir.path().join("state").to_str().unwrap()])
            // The hub's debug lines tell when each trigger has subscribed.
            .env("KTRIGGER_LOG", "info,ktrigger_kube::hub=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", options.ktrigger)),
    );
    let pid = child.0.id();

    let arrivals: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let stdout = child.0.stdout.take().unwrap();
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
    let stderr = child.0.stderr.take().unwrap();
    let stderr_lines: Arc<Mutex<Vec<String>>> = Arc::default();
    std::thread::spawn({
        let stderr_lines = stderr_lines.clone();
        move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                stderr_lines.lock().unwrap().push(line);
            }
        }
    });
    let count = |what: &str| stderr_lines.lock().unwrap().iter().filter(|l| l.contains(what)).count();
    // Ready: every trigger subscribed and every watch opened synced.
    let start = Instant::now();
    let opened = loop {
        let (opened, synced) = (count("opening watch"), count("watch synced"));
        if count("trigger subscribed") >= options.triggers && opened == synced {
            break opened;
        }
        if start.elapsed() > Duration::from_secs(300) {
            panic!("ktrigger did not sync its watches:\n{}", stderr_lines.lock().unwrap().join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "ktrigger started {} triggers and synced {} objects over {opened} watch(es) in {:.2}s",
        options.triggers,
        options.objects,
        start.elapsed().as_secs_f64()
    );
    let (after_sync_peak, _, _) = memory_kib(pid);

    // A plain watch client next to ktrigger: when each update reaches a watcher at all, so that
    // what ktrigger adds can be told from what the API server takes.
    let raw: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    // a permit per synced watch (a Notify would keep one of several notifications sent early)
    let raw_ready = Arc::new(tokio::sync::Semaphore::new(0));
    let raw_watches: Vec<_> = (0..kinds)
        .map(|k| {
            let (api, raw, ready, selectors) = (apis[k].clone(), raw.clone(), raw_ready.clone(), options.selectors);
            tokio::spawn(async move {
                let mut stream = watcher(api, watcher::Config::default()).boxed();
                while let Some(Ok(event)) = stream.next().await {
                    let now = Instant::now();
                    match event {
                        watcher::Event::InitDone => ready.add_permits(1),
                        watcher::Event::Apply(object) => {
                            let name = object.metadata.name.clone().unwrap_or_default();
                            let (kind, value) = if selectors {
                                let kind = object.types.as_ref().map(|t| t.kind.clone()).unwrap_or_default();
                                let v = object.metadata.annotations.as_ref().and_then(|a| a.get("v").cloned());
                                (format!("{kind}/"), v)
                            } else {
                                (String::new(), object.data["data"]["v"].as_str().map(str::to_string))
                            };
                            if let Some(value) = value {
                                raw.lock().unwrap().insert(format!("{kind}{name} {value}"), now);
                            }
                        }
                        _ => {}
                    }
                }
            })
        })
        .collect();
    let synced = raw_ready.acquire_many(u32::try_from(kinds).unwrap()).await.unwrap();
    synced.forget();

    // Warm-up: one update per kind, delivered before the timed ones (the triggers' first
    // start writes their indexes meanwhile).
    let warm = Instant::now();
    for index in 0..kinds {
        let (kind, name, _) = object(&options, index);
        let (patch, key) = if options.selectors {
            (json!({"metadata": {"annotations": {"v": "warm"}}}), format!("{}/{name} warm", KINDS[kind].1))
        } else {
            (json!({"data": {"v": "warm"}}), format!("{name} warm"))
        };
        apis[kind].patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
        while !arrivals.lock().unwrap().contains_key(&key) && warm.elapsed() < Duration::from_secs(300) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    eprintln!("first deliveries after {:.2}s", warm.elapsed().as_secs_f64());
    // The timed updates measure the steady state: they start once ktrigger's start-up work (the
    // triggers' first index writes among it, committed to disk) is done, and that of this
    // process (the test cluster's, the plain watch clients').
    let quiet = Instant::now();
    wait_until_idle(&[pid, std::process::id()]).await;
    eprintln!("ktrigger and the bench idle {:.2}s later", quiet.elapsed().as_secs_f64());
    arrivals.lock().unwrap().clear();

    let mut sent = Vec::with_capacity(options.updates);
    for i in 0..options.updates {
        let mut index = (i * 7919) % options.objects;
        if !options.selectors {
            // Only objects of groups some trigger filters for, so that every update is delivered.
            index -= index % GROUPS - (index % GROUPS) % options.triggers.clamp(1, GROUPS);
        }
        let (kind, name, _) = object(&options, index);
        let value = format!("u{i}");
        let (patch, key) = if options.selectors {
            (json!({"metadata": {"annotations": {"v": value}}}), format!("{}/{name} {value}", KINDS[kind].1))
        } else {
            (json!({"data": {"v": value}}), format!("{name} {value}"))
        };
        let at = Instant::now();
        apis[kind].patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
        sent.push((key, at, Instant::now()));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while arrivals.lock().unwrap().len() < options.updates {
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (peak, current, from_files) = memory_kib(pid);
    let arrived = arrivals.lock().unwrap().clone();
    let mut latencies: Vec<Duration> =
        sent.iter().filter_map(|(key, at, _)| arrived.get(key).map(|got| got.saturating_duration_since(*at))).collect();
    latencies.sort();
    let mut after_ack: Vec<Duration> = sent
        .iter()
        .filter_map(|(key, _, ack)| arrived.get(key).map(|got| got.saturating_duration_since(*ack)))
        .collect();
    after_ack.sort();
    let seen_raw = raw.lock().unwrap().clone();
    let mut added: Vec<Duration> = sent
        .iter()
        .filter_map(|(key, _, _)| Some(arrived.get(key)?.saturating_duration_since(*seen_raw.get(key)?)))
        .collect();
    added.sort();
    for task in raw_watches {
        task.abort();
    }
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let _ = child.0.wait();
    if cluster.is_none() {
        let _ = Api::<Namespace>::all(client.clone()).delete(&namespace, &Default::default()).await;
    }

    if latencies.len() < options.updates {
        let lines = stderr_lines.lock().unwrap();
        let problems: Vec<&String> = lines.iter().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
        eprintln!("ktrigger's last warnings and errors:");
        for line in problems.iter().rev().take(10).rev() {
            eprintln!("  {line}");
        }
    }
    let server = if cluster.is_some() { "test cluster" } else { "API server of --kubeconfig" };
    let mode = if options.selectors { "a distinct label selector each" } else { "a CEL filter each" };
    println!(
        "ktrigger run ({server}): {} objects of {kinds} kind(s), {} triggers with {mode}, {} updates",
        options.objects, options.triggers, options.updates
    );
    println!("  watches opened by ktrigger: {opened}");
    if let Some(cluster) = &cluster {
        let requests: u64 = (0..kinds).map(|k| cluster.watch_requests_for(KINDS[k].2)).sum();
        println!("  watch requests received:    {requests}");
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!("  peak RSS after sync:     {:.1} MiB", mib(after_sync_peak));
    println!(
        "  peak RSS at the end:     {:.1} MiB (current {:.1} MiB, of which {:.1} MiB mapped from files: the binary's code)",
        mib(peak),
        mib(current),
        mib(from_files)
    );
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
    if !added.is_empty() {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "  added over a plain watch client ({} updates): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            added.len(),
            ms(percentile(&added, 0.50)),
            ms(percentile(&added, 0.99)),
            ms(*added.last().unwrap())
        );
    }
}
