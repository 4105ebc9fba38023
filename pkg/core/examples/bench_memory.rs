//! Benchmark of memory under abuse: peak RSS of `ktrigger run` against its memory limits.
//!
//! Writes `--services` TriggerService files, each with one `webhook` source on its own path
//! and one `webhook` destination pointing at a receiver that accepts connections and never
//! answers, then runs the binary given by `--ktrigger` on them (`ktrigger run`, logs off) and
//! measures, each case in a fresh process:
//!
//! 1. **idle**: the services loaded, nothing sent: the baseline.
//! 2. **queue bytes**: `--abusive` of the services each receive `--deliveries` events of
//!    `--size` bytes; their deliveries cannot leave, so without a byte limit they would stay
//!    queued (1,000 of 900 KB: 900 MB for one trigger).
//! 3. **dedup keys**: the same services with `dedup` on a key taken from the event and a `log`
//!    destination (stdout discarded); the abusive ones receive `--keys` events whose keys are
//!    all different and `--key-size` bytes long.
//!
//! For each case it prints VmHWM (peak RSS) and VmRSS from /proc when the last event was
//! accepted, next to the limits in force, and the refusals counted by the triggers as printed
//! by `ktrigger run` on exit. It asserts nothing. Extra arguments after `--` go to `ktrigger run`
//! (e.g. `-- --max-queue-bytes 32Mi`).
//!
//! Run it through `hack/bench-memory.sh`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use serde_json::json;

struct Options {
    ktrigger: String,
    services: usize,
    abusive: usize,
    deliveries: usize,
    size: usize,
    keys: usize,
    key_size: usize,
    extra: Vec<String>,
}

fn options() -> Options {
    let mut options = Options {
        ktrigger: "target/release/ktrigger".into(),
        services: 100,
        abusive: 100,
        deliveries: 1000,
        size: 900_000,
        keys: 4000,
        key_size: 50_000,
        extra: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--" {
            options.extra = args.collect();
            break;
        }
        let value = args.next().unwrap_or_default();
        let number = || value.parse::<usize>().unwrap_or_else(|_| panic!("{flag} needs a number"));
        match flag.as_str() {
            "--ktrigger" => options.ktrigger = value.clone(),
            "--services" => options.services = number(),
            "--abusive" => options.abusive = number(),
            "--deliveries" => options.deliveries = number(),
            "--size" => options.size = number(),
            "--keys" => options.keys = number(),
            "--key-size" => options.key_size = number(),
            other => panic!(
                "unknown option {other}; known: --ktrigger PATH --services N --abusive N --deliveries N --size BYTES \
                 --keys N --key-size BYTES [-- ktrigger run flags]"
            ),
        }
    }
    options.abusive = options.abusive.min(options.services);
    options
}

/// Accepts connections and never answers them, keeping them open.
fn silent_receiver() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the silent receiver");
    let port = listener.local_addr().expect("receiver address").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    port
}

/// One TriggerService per file with a webhook source on `/bench/svc-{n}`: delivering to the
/// silent receiver, or, when `dedup`, deduplicated on `object.key` and delivering a short line
/// to the log, so that what stays in memory is the dedup state rather than queued events.
fn write_services(dir: &Path, services: usize, receiver: u16, dedup: bool) {
    for n in 0..services {
        let mut trigger = json!({
            "name": "hook",
            "source": {"type": "webhook", "properties": {"path": format!("/bench/svc-{n}")}},
            "destinations": [{"type": "webhook", "properties": {"url": format!("http://127.0.0.1:{receiver}/")}}],
        });
        if dedup {
            trigger["dedup"] = json!({"key": "object.key", "window": "1h"});
            trigger["destinations"] = json!([{"type": "log", "properties": {"message": "{{ event.id }}"}}]);
        }
        let service = json!({
            "apiVersion": "ktrigger.dev/v1alpha1",
            "kind": "TriggerService",
            "metadata": {"name": format!("svc-{n:03}")},
            "spec": {"triggers": [trigger]},
        });
        std::fs::write(dir.join(format!("svc-{n:03}.yaml")), service.to_string()).expect("write a TriggerService");
    }
}

struct Running {
    child: Child,
    port: u16,
    stderr: Receiver<String>,
}

fn start(options: &Options, dir: &Path) -> Running {
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let mut child = Command::new(&options.ktrigger)
        .args(["run", "-f"])
        .arg(dir)
        .args(["--webhook-addr", &format!("127.0.0.1:{port}"), "--shutdown-grace", "1s"])
        .args(&options.extra)
        .env("KTRIGGER_LOG", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ktrigger run");
    let (lines, stderr) = channel();
    let pipe = child.stderr.take().expect("stderr piped");
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let running = Running { child, port, stderr };
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        match running.stderr.recv_timeout(Duration::from_secs(1)) {
            Ok(line) if line.starts_with("ktrigger running") => return running,
            Ok(line) if line.starts_with("error") || line.starts_with("skipped") => panic!("ktrigger run: {line}"),
            _ => {}
        }
    }
    panic!("ktrigger run did not start within 120s");
}

/// `(VmHWM, VmRSS)` in MiB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kib| kib / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// POSTs `bodies` one after the other on one keep-alive connection; the number answered 202.
fn post_all(port: u16, path: &str, bodies: impl Iterator<Item = String>) -> usize {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the webhook listener");
    // Without it, delayed acknowledgements make every request wait tens of milliseconds.
    let _ = stream.set_nodelay(true);
    let mut accepted = 0;
    for body in bodies {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(request.as_bytes()).is_err() {
            break;
        }
        match read_status(&mut stream) {
            Some(202) => accepted += 1,
            Some(_) => {}
            None => break,
        }
    }
    accepted
}

/// Reads one response and returns its status code.
fn read_status(stream: &mut TcpStream) -> Option<u16> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).ok()?;
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let length = head
        .lines()
        .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).ok()?;
    Some(status)
}

/// Sends each abusive service its events from its own thread; the events accepted in all.
fn abuse(port: u16, abusive: usize, events: usize, body: impl Fn(usize, usize) -> String + Sync) -> usize {
    std::thread::scope(|scope| {
        let senders: Vec<_> = (0..abusive)
            .map(|service| {
                let body = &body;
                scope.spawn(move || {
                    let bodies = (0..events).map(|n| body(service, n));
                    post_all(port, &format!("/bench/svc-{service}"), bodies)
                })
            })
            .collect();
        senders.into_iter().map(|s| s.join().unwrap_or(0)).sum()
    })
}

/// Stops the process and sums `name=N` over the per-trigger lines it prints on exit.
fn stop(mut running: Running, names: &[&str]) -> Vec<u64> {
    let _ = Command::new("kill").args(["-TERM", &running.child.id().to_string()]).status();
    let _ = running.child.wait();
    let mut sums = vec![0u64; names.len()];
    while let Ok(line) = running.stderr.recv_timeout(Duration::from_secs(5)) {
        for (name, sum) in names.iter().zip(&mut sums) {
            let value = line.split_whitespace().find_map(|field| field.strip_prefix(&format!("{name}=")));
            *sum += value.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    sums
}

fn report(case: &str, started: Instant, pid: u32, detail: &str) {
    let (hwm, rss) = memory(pid);
    println!(
        "{case:<12} peak RSS (VmHWM) {hwm:>7.1} MiB   RSS {rss:>7.1} MiB   {:>6.1}s   {detail}",
        started.elapsed().as_secs_f64()
    );
}

fn main() {
    let options = options();
    let receiver = silent_receiver();
    let limits = if options.extra.is_empty() { "defaults".to_string() } else { options.extra.join(" ") };
    println!(
        "{} TriggerServices of one webhook trigger each, destination a receiver that never answers; limits: {limits}",
        options.services
    );

    let plain = tempfile::tempdir().expect("a temporary directory");
    let dir = plain.path();
    write_services(dir, options.services, receiver, false);
    let started = Instant::now();
    let running = start(&options, dir);
    std::thread::sleep(Duration::from_secs(2));
    report("idle", started, running.child.id(), "nothing sent");
    stop(running, &[]);

    let started = Instant::now();
    let running = start(&options, dir);
    let filler = "x".repeat(options.size);
    let accepted = abuse(running.port, options.abusive, options.deliveries, |service, n| {
        json!({"service": service, "n": n, "data": filler}).to_string()
    });
    let pid = running.child.id();
    let detail = format!(
        "{} services x {} events of {} bytes, {accepted} accepted",
        options.abusive, options.deliveries, options.size
    );
    report("queue bytes", started, pid, &detail);
    let sums = stop(running, &["fired", "deadLettered", "queueByteLimited"]);
    println!("{:<12} fired {}, dead-lettered {}, of which over a queue byte limit {}", "", sums[0], sums[1], sums[2]);

    let deduplicated = tempfile::tempdir().expect("a temporary directory");
    let dir = deduplicated.path();
    write_services(dir, options.services, receiver, true);
    let started = Instant::now();
    let running = start(&options, dir);
    let key_filler = "k".repeat(options.key_size);
    let accepted = abuse(running.port, options.abusive, options.keys, |service, n| {
        json!({"key": format!("{service}-{n}-{key_filler}")}).to_string()
    });
    let detail = format!(
        "{} services x {} distinct keys of {} bytes, {accepted} accepted",
        options.abusive, options.keys, options.key_size
    );
    report("dedup keys", started, running.child.id(), &detail);
    let sums = stop(running, &["fired", "filtered", "delivered"]);
    println!("{:<12} fired {}, duplicates {}, delivered {}", "", sums[0], sums[1], sums[2]);
}
