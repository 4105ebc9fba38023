//! The NATS JetStream state store against a real `nats-server -js` on loopback.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chrono::{SubsecRound, Utc};
use ktrigger_core::{
    Delivery, DeliveryQueue, Event, NatsAuth, NatsOptions, NatsStore, QueueError, StateStore, StoreError, TriggerId,
};
use serde_json::json;
use tempfile::TempDir;

/// A `nats-server -js` on a free loopback port with its own store directory, killed on drop.
struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    args: Vec<String>,
}

impl NatsServer {
    fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server started with `args` besides JetStream, port and store directory.
    fn start_with(args: &[&str]) -> Self {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let dir = tempfile::tempdir().expect("temp dir");
        let args = args.iter().map(|arg| arg.to_string()).collect();
        let mut server = NatsServer { child: None, port, dir, args };
        server.restart();
        server
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and store directory.
    fn restart(&mut self) {
        let child = spawn_server(self.port, self.dir.path(), &self.args);
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nats-server did not listen on port {} within 5s", self.port);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn_server(port: u16, dir: &Path, args: &[String]) -> Child {
    Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server is installed (Debian package nats-server; .ci/run installs it)")
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn options(server: &NatsServer) -> NatsOptions {
    NatsOptions { ack_wait: Duration::from_secs(1), timeout: Duration::from_secs(2), ..NatsOptions::new(server.url()) }
}

async fn store(server: &NatsServer) -> NatsStore {
    NatsStore::connect(options(server)).await.expect("connects")
}

fn trigger() -> TriggerId {
    TriggerId { namespace: "apps".into(), service: "svc".into(), trigger: "t".into() }
}

fn delivery(n: u32) -> Delivery {
    let event = Event::new("feed", "create", json!({"n": n, "text": "ünïcode / and spaces"}));
    let mut delivery = Delivery::new(trigger(), Arc::new(event), "webhook#0");
    delivery.id = format!("delivery-{n}");
    delivery
}

const QUEUE: &str = "apps/svc/t/queue/webhook#0";

async fn pop(queue: &Arc<dyn DeliveryQueue>) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), queue.pop()).await.expect("a delivery within 10s").expect("open")
}

#[tokio::test]
async fn deliveries_come_out_in_order_and_leave_the_stream_once_acked() {
    let server = NatsServer::start();
    let store = store(&server).await;
    let queue = store.open_queue(QUEUE, 100).await.unwrap();
    for n in 0..20 {
        queue.push(delivery(n)).unwrap().wait().await.unwrap();
    }
    assert_eq!(queue.len(), 20);
    let metrics = store.metrics();
    assert!(metrics.commits >= 20 && metrics.commit_seconds > 0.0, "{metrics:?}");
    for n in 0..20 {
        let popped = pop(&queue).await;
        assert_eq!(popped.id, format!("delivery-{n}"));
        assert_eq!(popped.event.object["n"], json!(n));
        assert_eq!(popped.trigger, trigger());
        queue.ack(&popped.id);
    }
    assert_eq!((queue.len(), queue.in_flight()), (0, 0));
    drop(queue);
    drop(store);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = self::store(&server).await.open_queue(QUEUE, 100).await.unwrap();
    assert_eq!(again.len(), 0, "acked deliveries are gone for the next owner");
}

#[tokio::test]
async fn a_popped_delivery_whose_holder_died_is_handed_out_again() {
    let server = NatsServer::start();
    let first = store(&server).await;
    let queue = first.open_queue(QUEUE, 100).await.unwrap();
    queue.push(delivery(1)).unwrap().wait().await.unwrap();
    queue.push(delivery(2)).unwrap().wait().await.unwrap();
    let popped = pop(&queue).await;
    assert_eq!(popped.id, "delivery-1");
    drop(queue);
    drop(first);
    let second = store(&server).await;
    let queue = second.open_queue(QUEUE, 100).await.unwrap();
    assert_eq!(queue.len(), 2, "both deliveries are still stored");
    let mut ids = vec![pop(&queue).await.id, pop(&queue).await.id];
    ids.sort();
    assert_eq!(ids, ["delivery-1", "delivery-2"]);
}

#[tokio::test]
async fn a_delivery_held_longer_than_the_ack_wait_is_not_handed_out_twice() {
    let server = NatsServer::start();
    let store = store(&server).await;
    let queue = store.open_queue(QUEUE, 100).await.unwrap();
    queue.push(delivery(1)).unwrap().wait().await.unwrap();
    queue.push(delivery(2)).unwrap().wait().await.unwrap();
    let first = pop(&queue).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let second = pop(&queue).await;
    assert_eq!(second.id, "delivery-2", "delivery-1 is still held, not handed out again");
    queue.ack(&first.id);
    queue.ack(&second.id);
    let nothing = tokio::time::timeout(Duration::from_secs(3), queue.pop()).await;
    assert!(nothing.is_err(), "nothing more: {:?}", nothing.map(|d| d.map(|d| d.id)));
}

#[tokio::test]
async fn attempts_and_the_next_attempt_time_survive_a_new_owner() {
    let server = NatsServer::start();
    let first = store(&server).await;
    let queue = first.open_queue(QUEUE, 100).await.unwrap();
    queue.push(delivery(1)).unwrap().wait().await.unwrap();
    let popped = pop(&queue).await;
    let next = (Utc::now() + chrono::Duration::seconds(90)).trunc_subsecs(3);
    queue.record_attempt(&popped, 3, next);
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(queue);
    drop(first);
    let second = store(&server).await;
    let queue = second.open_queue(QUEUE, 100).await.unwrap();
    let again = pop(&queue).await;
    assert_eq!(again.id, "delivery-1");
    assert_eq!(again.attempts, 3);
    assert_eq!(again.not_before, Some(next));
    queue.ack(&again.id);
}

#[tokio::test]
async fn a_full_queue_refuses_and_a_removed_queue_is_empty() {
    let server = NatsServer::start();
    let store = store(&server).await;
    let queue = store.open_queue(QUEUE, 2).await.unwrap();
    queue.push(delivery(1)).unwrap().wait().await.unwrap();
    queue.push(delivery(2)).unwrap().wait().await.unwrap();
    assert!(matches!(queue.push(delivery(3)), Err(QueueError::Full(2))));
    queue.close();
    assert!(matches!(queue.push(delivery(4)), Err(QueueError::Closed)));
    drop(queue);
    assert_eq!(store.remove_queue(QUEUE).await.unwrap(), 2);
    let queue = store.open_queue(QUEUE, 2).await.unwrap();
    assert_eq!(queue.len(), 0);
}

#[tokio::test]
async fn two_stores_can_never_both_own_a_key() {
    let server = NatsServer::start();
    let (a, b) = (store(&server).await, store(&server).await);
    let key = "apps/svc/t/router/dedup/pod restart";
    a.put(key, b"a1".to_vec()).wait().await.unwrap();
    let lost = b.put(key, b"b1".to_vec()).wait().await;
    assert!(matches!(lost, Err(StoreError::Conflict(_))), "{lost:?}");
    assert_eq!(b.load("apps/svc/t/").await.unwrap(), vec![(key.to_string(), b"a1".to_vec())]);
    b.put(key, b"b2".to_vec()).wait().await.expect("b took the key over by reading it");
    let stale = a.put(key, b"a2".to_vec()).wait().await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))), "{stale:?}");
    let stale = a.delete(key).wait().await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))), "{stale:?}");
    assert_eq!(a.load(key).await.unwrap(), vec![(key.to_string(), b"b2".to_vec())]);
}

#[tokio::test]
async fn writes_to_one_key_follow_each_other_without_conflict() {
    let server = NatsServer::start();
    let store = store(&server).await;
    let commits: Vec<_> = (0..50).map(|n| store.put("k", format!("{n}").into_bytes())).collect();
    for commit in commits {
        commit.wait().await.unwrap();
    }
    assert_eq!(store.load("k").await.unwrap(), vec![("k".to_string(), b"49".to_vec())]);
}

#[tokio::test]
async fn load_finds_awkward_keys_by_prefix_in_key_order() {
    let server = NatsServer::start();
    let store = store(&server).await;
    let keys = [
        "apps/svc/t/router/dedup/pod-restart/web 1",
        "apps/svc/t/router/dedup/ünï/çödé 🙂",
        "apps/svc/t/router/dedup/a.b>*",
        "apps/svc/t/source/rv",
        "apps/svc/t2/source/rv",
        "apps/svc/t/router/debounce",
    ];
    for (n, key) in keys.iter().enumerate() {
        store.put(key, vec![n as u8]).wait().await.unwrap();
    }
    let loaded = store.load("apps/svc/t/").await.unwrap();
    let mut expected: Vec<(String, Vec<u8>)> = keys
        .iter()
        .enumerate()
        .filter(|(_, key)| key.starts_with("apps/svc/t/"))
        .map(|(n, key)| (key.to_string(), vec![n as u8]))
        .collect();
    expected.sort();
    assert_eq!(loaded, expected);
    let partial: Vec<String> = store.load("apps/svc/t/router/de").await.unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(partial.len(), 4, "{partial:?}");
    store.delete("apps/svc/t/source/rv").wait().await.unwrap();
    store.delete_prefix("apps/svc/t/router/dedup/").wait().await.unwrap();
    let left: Vec<String> = store.load("apps/").await.unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(left, ["apps/svc/t/router/debounce", "apps/svc/t2/source/rv"]);
    store.put("apps/svc/t/source/rv", b"again".to_vec()).wait().await.expect("a deleted key can be written anew");
}

#[tokio::test]
async fn while_the_server_is_down_the_store_is_unhealthy_and_writes_fail_then_it_recovers() {
    let mut server = NatsServer::start();
    let store = store(&server).await;
    let queue = store.open_queue(QUEUE, 100).await.unwrap();
    assert_eq!(store.health(), Ok(()));
    server.kill();
    wait_until(|| store.health().is_err()).await;
    let put = tokio::time::timeout(Duration::from_secs(10), store.put("k", b"v".to_vec()).wait()).await;
    assert!(matches!(put, Ok(Err(StoreError::Unavailable(_)))), "{put:?}");
    let push = tokio::time::timeout(Duration::from_secs(10), queue.push(delivery(1)).unwrap().wait()).await;
    assert!(matches!(push, Ok(Err(StoreError::Unavailable(_)))), "{push:?}");
    server.restart();
    wait_until(|| store.health().is_ok()).await;
    store.put("k", b"v".to_vec()).wait().await.unwrap();
    queue.push(delivery(2)).unwrap().wait().await.unwrap();
    let popped = pop(&queue).await;
    // A publish the client still had buffered when the server went away may land too.
    let popped = if popped.id == "delivery-1" { pop(&queue).await } else { popped };
    assert_eq!(popped.id, "delivery-2");
}

#[tokio::test]
async fn an_unreachable_server_or_one_without_jetstream_is_a_clear_error() {
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).unwrap().port();
    let error = NatsStore::connect(NatsOptions::new(format!("nats://127.0.0.1:{port}"))).await.unwrap_err();
    assert!(error.to_string().contains(&format!("cannot reach NATS at nats://127.0.0.1:{port}")), "{error}");
    let mut plain = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let error = NatsStore::connect(NatsOptions::new(format!("nats://127.0.0.1:{port}"))).await.unwrap_err();
    let _ = plain.kill();
    let _ = plain.wait();
    assert!(error.to_string().contains("JetStream disabled"), "{error}");
}

#[tokio::test]
async fn a_password_is_read_from_its_file_and_never_shown() {
    let server = NatsServer::start_with(&["--user", "ktrigger", "--pass", "right-secret"]);
    let dir = tempfile::tempdir().unwrap();
    let with_password = |password: &str| {
        let file = dir.path().join(password);
        std::fs::write(&file, format!("{password}\n")).unwrap();
        NatsOptions {
            auth: NatsAuth::UserPassword { user: "ktrigger".into(), password_file: file },
            ..options(&server)
        }
    };
    let store = NatsStore::connect(with_password("right-secret")).await.expect("the password file's line is used");
    store.put("k", b"v".to_vec()).wait().await.unwrap();
    let error = NatsStore::connect(with_password("wrong-secret")).await.unwrap_err().to_string();
    assert!(error.contains("cannot reach NATS"), "{error}");
    assert!(!error.contains("wrong-secret"), "{error}");
    let missing = NatsOptions {
        auth: NatsAuth::UserPassword { user: "ktrigger".into(), password_file: dir.path().join("absent") },
        ..options(&server)
    };
    let error = NatsStore::connect(missing).await.unwrap_err().to_string();
    assert!(error.contains("--state-password-file") && error.contains("not found"), "{error}");
}

async fn wait_until(condition: impl Fn() -> bool) {
    for _ in 0..200 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not met within 10s");
}
