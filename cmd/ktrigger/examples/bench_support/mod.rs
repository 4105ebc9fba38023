//! The load generator and receiver shared by the `ktrigger run` benchmarks: keep-alive HTTP/1.1
//! senders posting webhook events, a local receiver counting deliveries, and process control.
// Each benchmark compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Reads one HTTP/1.1 message from `reader`: its first line and its lower-cased header lines, or
/// `None` at the end of the connection. The body is read and dropped.
pub fn read_message(reader: &mut BufReader<TcpStream>) -> Option<(String, Vec<String>)> {
    let mut first = String::new();
    match reader.read_line(&mut first) {
        Ok(0) | Err(_) => return None,
        Ok(_) => {}
    }
    let mut headers = Vec::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        if line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(value) = lower.strip_prefix("content-length:") {
            length = value.trim().parse().unwrap_or(0);
        }
        headers.push(lower);
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((first, headers))
}

/// A receiver answering 200 after `delay` on keep-alive connections (a thread per connection):
/// its port, and the count of requests it answered.
pub fn receiver(delay: Duration) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let counter = counter.clone();
            std::thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                while read_message(&mut reader).is_some() {
                    if !delay.is_zero() {
                        std::thread::sleep(delay);
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    if writer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, count)
}

/// A free local port for the webhook listener.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until something listens on `port`, at most a minute.
pub fn wait_listening(port: u16) {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(60), "ktrigger did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What the senders were told.
#[derive(Default)]
pub struct Sent {
    /// Requests answered 202.
    pub accepted: AtomicUsize,
    /// Requests answered 503 or 429, each retried.
    pub refused: AtomicUsize,
}

/// Posts `events` events to `/in` over `senders` keep-alive connections, the body of event `n`
/// being `body(n)`; a 503 or 429 is retried after its Retry-After (at most 1 s).
pub fn send(port: u16, events: usize, senders: usize, body: impl Fn(usize) -> String + Sync) -> Sent {
    let next = AtomicUsize::new(0);
    let sent = Sent::default();
    std::thread::scope(|scope| {
        for _ in 0..senders {
            scope.spawn(|| {
                let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
                stream.set_nodelay(true).unwrap();
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= events {
                        return;
                    }
                    let body = body(n);
                    let request = format!(
                        "POST /in HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\nidempotency-key: e{n}\r\n\
                         content-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    loop {
                        writer.write_all(request.as_bytes()).unwrap();
                        let (status, headers) = read_message(&mut reader).expect("an answer");
                        if status.contains(" 202 ") {
                            sent.accepted.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        assert!(status.contains(" 503 ") || status.contains(" 429 "), "event {n}: {status}");
                        sent.refused.fetch_add(1, Ordering::SeqCst);
                        let after = headers
                            .iter()
                            .find_map(|h| h.strip_prefix("retry-after:").and_then(|v| v.trim().parse::<u64>().ok()))
                            .unwrap_or(1);
                        std::thread::sleep(Duration::from_secs(after.min(1)));
                    }
                }
            });
        }
    });
    sent
}

/// Waits until `count` reaches `target` or stops growing for 10 s; whether it reached it.
pub fn wait_for(count: &AtomicUsize, target: usize) -> bool {
    let mut last = (count.load(Ordering::SeqCst), Instant::now());
    while count.load(Ordering::SeqCst) < target {
        let now = count.load(Ordering::SeqCst);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(10) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

/// Stops `ktrigger run` with SIGTERM and waits for it to exit.
pub fn stop(mut child: Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
}
