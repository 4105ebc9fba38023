//! The embedded store: what it keeps survives reopening, a bad file is moved aside, and a file
//! in use is refused.

use std::sync::Arc;

use chrono::Utc;
use ktrigger_core::{
    Delivery, DeliveryQueue, Event, QueueError, REDB_FILE_NAME, RedbStore, SCHEMA_VERSION, StateStore, StoreError,
    TriggerId,
};
use serde_json::json;

fn trigger() -> TriggerId {
    TriggerId { namespace: "ns".into(), service: "svc".into(), trigger: "t".into() }
}

fn delivery(n: u64) -> Delivery {
    let event = Event::new("webhook", "receive", json!({"n": n})).with_id(format!("event-{n}"));
    Delivery::new(trigger(), Arc::new(event), "webhook#0")
}

fn open(dir: &std::path::Path) -> RedbStore {
    let (store, moved) = RedbStore::open(dir).expect("the store opens");
    assert_eq!(moved, None, "nothing moved aside");
    store
}

/// Opens the store again once the previous one let go of the file: its writer thread ends
/// shortly after the last handle is dropped.
fn reopen(dir: &std::path::Path) -> RedbStore {
    for _ in 0..250 {
        match RedbStore::open(dir) {
            Err(StoreError::Unavailable(message)) if message.contains("in use") => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            opened => {
                let (store, moved) = opened.expect("the store opens again");
                assert_eq!(moved, None, "nothing moved aside");
                return store;
            }
        }
    }
    panic!("the previous store never let go of the file");
}

async fn pop_n(queue: &dyn DeliveryQueue, n: usize) -> Vec<Delivery> {
    let mut popped = Vec::new();
    for _ in 0..n {
        popped.push(queue.pop().await.expect("a delivery"));
    }
    popped
}

#[tokio::test]
async fn deliveries_not_acked_come_back_in_order_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        let queue = store.open_queue("q", 100).await.unwrap();
        let commits: Vec<_> = (0..5).map(|n| queue.push(delivery(n)).unwrap()).collect();
        for commit in commits {
            commit.wait().await.expect("stored");
        }
        let popped = pop_n(queue.as_ref(), 2).await;
        queue.ack(&popped[0].id);
        queue.record_attempt(&popped[1], 3, Utc::now() + chrono::Duration::seconds(90));
        store.put("x", b"y".to_vec()).wait().await.unwrap();
        assert_eq!(store.metrics().pending_deliveries, 4);
    }
    let store = reopen(dir.path());
    let queue = store.open_queue("q", 100).await.unwrap();
    assert_eq!(queue.len(), 4, "the acked delivery is gone, the others are back");
    let popped = pop_n(queue.as_ref(), 4).await;
    let numbers: Vec<u64> = popped.iter().map(|d| d.event.object["n"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [1, 2, 3, 4]);
    assert_eq!(popped[0].id, delivery(1).id, "the same deterministic id");
    assert_eq!(popped[0].attempts, 3, "attempts survive");
    let wait = popped[0].not_before.expect("the next attempt time survives") - Utc::now();
    assert!(wait > chrono::Duration::seconds(60), "backoff continues: next attempt in {wait}");
    assert_eq!(popped[1].attempts, 0);
    assert_eq!(store.metrics().pending_deliveries, 4);
}

#[tokio::test]
async fn a_full_queue_refuses_and_a_closed_one_drains() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let queue = store.open_queue("q", 2).await.unwrap();
    queue.push(delivery(0)).unwrap();
    queue.push(delivery(1)).unwrap();
    assert!(matches!(queue.push(delivery(2)), Err(QueueError::Full(2))));
    queue.close();
    assert!(matches!(queue.push(delivery(3)), Err(QueueError::Closed)));
    assert_eq!(pop_n(queue.as_ref(), 2).await.len(), 2);
    assert!(queue.pop().await.is_none(), "closed and empty");
}

#[tokio::test]
async fn a_restarted_trigger_takes_over_its_queue_without_loading_it_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let old = store.open_queue("q", 10).await.unwrap();
    for n in 0..3 {
        old.push(delivery(n)).unwrap();
    }
    let in_flight = old.pop().await.unwrap();
    let new = store.open_queue("q", 10).await.unwrap();
    old.close();
    assert!(old.pop().await.is_none(), "the old run stops popping once it is closed and taken over");
    assert_eq!(new.len(), 2, "the waiting deliveries, once");
    old.ack(&in_flight.id);
    let rest = pop_n(new.as_ref(), 2).await;
    assert_eq!(rest.iter().map(|d| d.event.object["n"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2]);
}

#[tokio::test]
async fn keys_load_by_prefix_and_delete_by_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for key in ["a/1", "a/2", "a/2/x", "ab", "b/1"] {
        store.put(key, key.as_bytes().to_vec()).wait().await.unwrap();
    }
    let keys = |entries: Vec<(String, Vec<u8>)>| entries.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(keys(store.load("a/").await.unwrap()), ["a/1", "a/2", "a/2/x"]);
    store.delete("a/1").wait().await.unwrap();
    store.delete_prefix("a/2").wait().await.unwrap();
    assert_eq!(keys(store.load("a").await.unwrap()), ["ab"]);
    assert_eq!(store.load("b/").await.unwrap(), [("b/1".to_string(), b"b/1".to_vec())]);
}

#[test]
fn a_corrupt_file_is_moved_aside_and_a_fresh_one_started() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = vec![0x5a_u8; 64 * 1024];
    std::fs::write(dir.path().join(REDB_FILE_NAME), &garbage).unwrap();
    let (_store, moved) = RedbStore::open(dir.path()).expect("a fresh store");
    let moved = moved.expect("the bad file was moved aside");
    assert_eq!(std::fs::read(&moved.to).unwrap(), garbage, "moved, not deleted");
    assert!(moved.to.starts_with(dir.path()));
    assert!(!moved.reason.is_empty());
}

#[test]
fn a_file_of_another_schema_version_is_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    {
        let database = redb::Database::create(dir.path().join(REDB_FILE_NAME)).unwrap();
        let write = database.begin_write().unwrap();
        {
            let mut meta = write.open_table(redb::TableDefinition::<&str, u64>::new("meta")).unwrap();
            meta.insert("schema", u64::from(SCHEMA_VERSION) + 1).unwrap();
        }
        write.commit().unwrap();
    }
    let (_store, moved) = RedbStore::open(dir.path()).expect("a fresh store");
    let moved = moved.expect("moved aside");
    assert!(moved.reason.contains("schema version"), "{}", moved.reason);
}

#[test]
fn a_file_in_use_is_refused_not_moved() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path());
    let error = RedbStore::open(dir.path()).err().expect("refused");
    assert!(matches!(&error, StoreError::Unavailable(m) if m.contains("in use")), "{error}");
    assert!(dir.path().join(REDB_FILE_NAME).exists());
}
