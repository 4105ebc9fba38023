//! Benchmark of delivery throughput, through `ktrigger run` (release build), optionally beside a
//! baseline binary run with the same load.
//!
//! 1. **Fast receiver**: `--events` webhook events posted by `--senders` keep-alive connections,
//!    relayed by one trigger (queue large enough for all) to a local receiver that answers at
//!    once: deliveries per second from the first post to the last delivery, and inbound
//!    requests per second (first post to last answer).
//! 2. **Slow receiver**: `--slow-events` events to a receiver answering each request after
//!    50 ms: deliveries per second (goal: close to concurrency / 50 ms, 320/s with the default
//!    16).
//! 3. **Burst with the defaults**: `--burst` events as fast as the senders can, default queue
//!    and limits; senders retry a refused request after its Retry-After. Counts the 202s, the
//!    503s, the deliveries and the dead-lettered deliveries (goal: none).
//!
//! It prints figures and asserts nothing. Run it through `hack/bench-throughput.sh`.

mod bench_support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bench_support::{free_port, receiver, send, stop, wait_for, wait_listening};

struct Options {
    binaries: Vec<(String, String)>,
    events: usize,
    slow_events: usize,
    burst: usize,
    senders: usize,
}

fn options() -> Options {
    let mut options = Options { binaries: Vec::new(), events: 20_000, slow_events: 1_000, burst: 20_000, senders: 16 };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        let number = || value.parse::<usize>().unwrap_or_else(|_| panic!("{flag} needs a number"));
        match flag.as_str() {
            "--ktrigger" => options.binaries.push(("current".into(), value.clone())),
            "--baseline" => options.binaries.insert(0, ("baseline".into(), value.clone())),
            "--events" => options.events = number(),
            "--slow-events" => options.slow_events = number(),
            "--burst" => options.burst = number(),
            "--senders" => options.senders = number(),
            other => panic!(
                "unknown option {other}; known: --ktrigger PATH --baseline PATH --events N --slow-events N --burst N --senders N"
            ),
        }
    }
    if options.binaries.iter().all(|(name, _)| name != "current") {
        options.binaries.push(("current".into(), "target/release/ktrigger".into()));
    }
    options
}

/// One trigger relaying webhook events to the receiver; `queue_size` when given.
fn write_config(dir: &Path, receiver: u16, queue_size: Option<usize>) -> String {
    let queue = queue_size.map(|size| format!("\n          queueSize: {size}")).unwrap_or_default();
    let text = format!(
        "apiVersion: ktrigger.dev/v1alpha1\nkind: TriggerService\nmetadata: {{name: bench}}\nspec:\n  triggers:\n    \
         - name: relay\n      source: {{type: webhook, properties: {{path: /in}}}}\n      destinations:\n        \
         - type: webhook{queue}\n          properties: {{url: \"http://127.0.0.1:{receiver}/\"}}\n"
    );
    let path = dir.join("bench.yaml");
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// Starts `ktrigger run` (state in memory) and waits until it runs; counts dead-letter lines.
fn start(binary: &str, config: &str, port: u16, extra: &[&str]) -> (Child, Arc<AtomicUsize>) {
    let mut child = Command::new(binary)
        .args(["run", "-f", config, "--webhook-addr", &format!("127.0.0.1:{port}"), "--state-dir", "none"])
        .args(extra)
        .env("KTRIGGER_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ktrigger starts");
    let stderr = child.stderr.take().unwrap();
    let dead = Arc::new(AtomicUsize::new(0));
    let counter = dead.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            if line.unwrap_or_default().contains("dead-lettered") {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    wait_listening(port);
    (child, dead)
}

/// Figures of one run.
struct Figures {
    deliveries_per_second: f64,
    /// Seconds from the first post to the last answer.
    inbound_seconds: f64,
    accepted: usize,
    refused: usize,
    delivered: usize,
    dead_lettered: usize,
}

impl Figures {
    /// Requests answered per second, refused ones included.
    fn inbound_per_second(&self) -> f64 {
        (self.accepted + self.refused) as f64 / self.inbound_seconds.max(1e-9)
    }
}

fn run(binary: &str, events: usize, senders: usize, delay: Duration, queue_size: Option<usize>) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let (receiver_port, count) = receiver(delay);
    let config = write_config(dir.path(), receiver_port, queue_size);
    let port = free_port();
    let big = ["--max-queue-bytes", "1Gi", "--max-queue-bytes-per-trigger", "1Gi"];
    let extra: &[&str] = if queue_size.is_some() { &big } else { &[] };
    let (child, dead) = start(binary, &config, port, extra);
    let started = Instant::now();
    let sent = send(port, events, senders, |n| format!("{{\"n\":{n},\"service\":\"checkout\",\"status\":\"failed\"}}"));
    let inbound = started.elapsed();
    wait_for(&count, events);
    let elapsed = started.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    stop(child);
    let delivered = count.load(Ordering::SeqCst);
    Figures {
        deliveries_per_second: delivered as f64 / elapsed.as_secs_f64(),
        inbound_seconds: inbound.as_secs_f64(),
        accepted: sent.accepted.load(Ordering::SeqCst),
        refused: sent.refused.load(Ordering::SeqCst),
        delivered,
        dead_lettered: dead.load(Ordering::SeqCst),
    }
}

fn main() {
    let options = options();
    let names: Vec<&str> = options.binaries.iter().map(|(name, _)| name.as_str()).collect();
    println!("{:<58}{}", "", names.iter().map(|n| format!("{n:>12}")).collect::<String>());
    let row = |label: &str, values: Vec<String>| {
        println!("{label:<58}{}", values.iter().map(|v| format!("{v:>12}")).collect::<String>());
    };
    let fast: Vec<Figures> = options
        .binaries
        .iter()
        .map(|(_, binary)| run(binary, options.events, options.senders, Duration::ZERO, Some(options.events)))
        .collect();
    println!("1. {} events, {} senders, receiver answering at once", options.events, options.senders);
    row("   deliveries/s (goal >= 10,000)", fast.iter().map(|f| format!("{:.0}", f.deliveries_per_second)).collect());
    row("   inbound requests/s", fast.iter().map(|f| format!("{:.0}", f.inbound_per_second())).collect());
    let slow: Vec<Figures> = options
        .binaries
        .iter()
        .map(|(_, binary)| {
            run(binary, options.slow_events, options.senders, Duration::from_millis(50), Some(options.slow_events))
        })
        .collect();
    println!("2. {} events, receiver answering after 50 ms", options.slow_events);
    row(
        "   deliveries/s (goal ~ concurrency / 50 ms = 320)",
        slow.iter().map(|f| format!("{:.0}", f.deliveries_per_second)).collect(),
    );
    let burst: Vec<Figures> = options
        .binaries
        .iter()
        .map(|(_, binary)| run(binary, options.burst, options.senders, Duration::ZERO, None))
        .collect();
    println!("3. burst of {} events with the default settings (senders retry 503s)", options.burst);
    row("   accepted (202)", burst.iter().map(|f| f.accepted.to_string()).collect());
    row("   refused with Retry-After (503/429), retried", burst.iter().map(|f| f.refused.to_string()).collect());
    row("   delivered", burst.iter().map(|f| f.delivered.to_string()).collect());
    row("   dead-lettered (goal 0)", burst.iter().map(|f| f.dead_lettered.to_string()).collect());
    row(
        "   inbound requests/s (503s included)",
        burst.iter().map(|f| format!("{:.0}", f.inbound_per_second())).collect(),
    );
}
