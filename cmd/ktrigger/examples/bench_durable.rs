//! Benchmark of the embedded state store, through `ktrigger run` (release build).
//!
//! 1. **Throughput**: `--events` webhook events, posted by `--senders` keep-alive connections,
//!    relayed by one trigger to a local receiver that answers at once; deliveries per second
//!    from the first post to the last delivery, in memory (`--state-dir none`) and with the
//!    embedded store, each in a fresh process. The ratio is durable / memory.
//! 2. **State size with dedup keys**: `--keys` events with distinct dedup keys; the size of the
//!    state file once they are stored.
//! 3. **Watched objects and catching up**: on the in-process test cluster, `--objects`
//!    ConfigMaps watched by one resource-watcher trigger (updates, with `oldObject`); the size
//!    of the state file once they are indexed; then every one of them updated while ktrigger is
//!    stopped, and the time from the restart to the last of those updates delivered.
//!
//! It prints figures and asserts nothing. Run it through `hack/bench-durable.sh`.

mod bench_support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bench_support::{free_port, receiver, send, stop};

struct Options {
    ktrigger: String,
    events: usize,
    senders: usize,
    keys: usize,
    objects: usize,
}

fn options() -> Options {
    let mut options = Options {
        ktrigger: "target/release/ktrigger".into(),
        events: 20_000,
        senders: 16,
        keys: 10_000,
        objects: 10_000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        let number = || value.parse::<usize>().unwrap_or_else(|_| panic!("{flag} needs a number"));
        match flag.as_str() {
            "--ktrigger" => options.ktrigger = value.clone(),
            "--events" => options.events = number(),
            "--senders" => options.senders = number(),
            "--keys" => options.keys = number(),
            "--objects" => options.objects = number(),
            other => {
                panic!("unknown option {other}; known: --ktrigger PATH --events N --senders N --keys N --objects N")
            }
        }
    }
    options
}

fn write_config(dir: &Path, receiver: u16, dedup: bool) -> String {
    let dedup = if dedup { "\n      dedup: {key: \"string(object.key)\", window: 1h}" } else { "" };
    let text = format!(
        "apiVersion: ktrigger.dev/v1alpha1\nkind: TriggerService\nmetadata: {{name: bench}}\nspec:\n  triggers:\n    \
         - name: relay\n      source: {{type: webhook, properties: {{path: /in}}}}{dedup}\n      destinations:\n        \
         - type: webhook\n          queueSize: 100000\n          properties: {{url: \"http://127.0.0.1:{receiver}/\"}}\n"
    );
    let path = dir.join("bench.yaml");
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// Starts `ktrigger run` and waits until it runs.
fn start(options: &Options, config: &str, port: u16, state: &str) -> Child {
    start_with(options, config, port, state, &[], "ktrigger running")
}

/// Starts `ktrigger run` with `extra` arguments and waits for a line containing `ready`.
fn start_with(options: &Options, config: &str, port: u16, state: &str, extra: &[&str], ready: &str) -> Child {
    let mut child = Command::new(&options.ktrigger)
        .args(["run", "-f", config, "--webhook-addr", &format!("127.0.0.1:{port}"), "--state-dir", state])
        .args(extra)
        .args(["--max-queue-bytes", "1Gi", "--max-queue-bytes-per-trigger", "1Gi"])
        .env("KTRIGGER_LOG", "info,ktrigger_core::delivery=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ktrigger starts");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    for line in lines.by_ref() {
        let line = line.unwrap_or_default();
        if line.starts_with("error") {
            panic!("ktrigger failed to start: {line}");
        }
        if line.contains(ready) {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    child
}

/// Waits until all `target` deliveries arrived.
fn wait_for(count: &AtomicUsize, target: usize) {
    let delivered = bench_support::wait_for(count, target);
    assert!(delivered, "only {} of {target} delivered", count.load(Ordering::SeqCst));
}

/// Deliveries per second relayed with the state in `state` (`none`: memory).
fn throughput(options: &Options, state: &str) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let (receiver_port, count) = receiver(Duration::ZERO);
    let config = write_config(dir.path(), receiver_port, false);
    let port = free_port();
    let child = start(options, &config, port, state);
    let started = Instant::now();
    send(port, options.events, options.senders, |n| {
        format!("{{\"n\":{n},\"service\":\"checkout\",\"status\":\"failed\"}}")
    });
    wait_for(&count, options.events);
    let rate = options.events as f64 / started.elapsed().as_secs_f64();
    stop(child);
    rate
}

/// Size of the state file under `dir`.
fn state_size(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("state.redb")).map(|m| m.len()).unwrap_or(0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// Part 3: state size with `--objects` watched ConfigMaps, and the catch-up after all of them
/// changed while ktrigger was stopped.
fn watched_objects(options: &Options) {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, Patch, PatchParams, PostParams};

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let cluster = runtime.block_on(ktrigger_testcluster::TestCluster::start());
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    cluster.write_kubeconfig(&kubeconfig).unwrap();
    let client = runtime.block_on(cluster.client());
    let configmaps: Api<ConfigMap> = Api::namespaced(client, "default");
    runtime.block_on(async {
        for n in 0..options.objects {
            let body = serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("cm-{n:05}"), "labels": {"app": "bench"}},
                "data": {"v": "1"},
            }))
            .unwrap();
            configmaps.create(&PostParams::default(), &body).await.unwrap();
        }
    });
    let (receiver_port, count) = receiver(Duration::ZERO);
    let config = dir.path().join("watch.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: ktrigger.dev/v1alpha1\nkind: TriggerService\nmetadata: {{name: bench}}\nspec:\n  triggers:\n    \
             - name: updates\n      source:\n        type: resource-watcher\n        properties: {{apiVersion: v1, kind: ConfigMap, \
             namespace: default, events: [update]}}\n      filter: has(oldObject.data)\n      destinations:\n        \
             - type: webhook\n          queueSize: 100000\n          properties: {{url: \"http://127.0.0.1:{receiver_port}/\"}}\n"
        ),
    )
    .unwrap();
    let config = config.to_string_lossy().into_owned();
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_str().unwrap();
    let kube_args = ["--kubeconfig", kubeconfig.to_str().unwrap()];
    let port = free_port();
    let empty = state_size(state.path());
    let child = start_with(options, &config, port, state_dir, &kube_args, "watch synced");
    // The index is written as the first list is recorded; wait until the file stops growing.
    let mut size = state_size(state.path());
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = state_size(state.path());
        if now == size && now > empty {
            break;
        }
        size = now;
    }
    stop(child);
    println!("state size: {} watched ConfigMaps (one data key each, last state kept for oldObject)", options.objects);
    println!("  state file: {:.1} MiB ({} bytes per object)", mib(size), size / options.objects.max(1) as u64);
    runtime.block_on(async {
        for n in 0..options.objects {
            let patch = Patch::Merge(serde_json::json!({"data": {"v": "2"}}));
            configmaps.patch(&format!("cm-{n:05}"), &PatchParams::default(), &patch).await.unwrap();
        }
    });
    let started = Instant::now();
    let child = start_with(options, &config, port, state_dir, &kube_args, "watch synced");
    wait_for(&count, options.objects);
    let elapsed = started.elapsed();
    stop(child);
    println!("catch-up: {} ConfigMaps updated while ktrigger was stopped", options.objects);
    println!(
        "  from the restart to the last of them delivered: {:.2} s ({:.0} updates/s)",
        elapsed.as_secs_f64(),
        options.objects as f64 / elapsed.as_secs_f64()
    );
}

fn main() {
    let options = options();
    println!(
        "throughput: {} webhook events over {} connections to one trigger, relayed to a local receiver",
        options.events, options.senders
    );
    let memory = throughput(&options, "none");
    println!("  in memory (--state-dir none): {memory:>8.0} deliveries/s");
    let state = tempfile::tempdir().unwrap();
    let durable = throughput(&options, state.path().to_str().unwrap());
    println!("  embedded store (redb):        {durable:>8.0} deliveries/s");
    println!("  ratio durable / memory:       {:>8.2} (goal: at least 0.80)", durable / memory);

    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let (receiver_port, count) = receiver(Duration::ZERO);
    let config = write_config(dir.path(), receiver_port, true);
    let port = free_port();
    let child = start(&options, &config, port, state.path().to_str().unwrap());
    let before = state_size(state.path());
    send(port, options.keys, options.senders, |n| format!("{{\"key\":\"checkout-{n:08}\"}}"));
    wait_for(&count, options.keys);
    std::thread::sleep(Duration::from_millis(500));
    let after = state_size(state.path());
    stop(child);
    println!("state size: {} dedup keys (each ~20 bytes, window 1h)", options.keys);
    println!(
        "  state file: {:.1} MiB ({:.1} MiB empty; {} bytes per key)",
        mib(after),
        mib(before),
        after.saturating_sub(before) / options.keys.max(1) as u64
    );
    watched_objects(&options);
}
