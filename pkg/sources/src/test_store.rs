//! A durable state store for the sources' tests: a map that outlives the sources using it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ktrigger_core::{Commit, DeliveryQueue, MemoryStore, SourceState, StateStore, StoreError, StoreMetrics, TriggerId};

/// Keeps every entry in a map; every write is durable at once.
#[derive(Default)]
pub(crate) struct MapStore {
    entries: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MapStore {
    /// The source state of trigger `s/t` in `store`.
    pub(crate) fn source_state(store: &Arc<MapStore>) -> SourceState {
        let trigger = TriggerId { namespace: String::new(), service: "s".into(), trigger: "t".into() };
        SourceState::new(store.clone(), &trigger)
    }

    /// Every key stored.
    pub(crate) fn keys(&self) -> Vec<String> {
        self.entries.lock().unwrap().keys().cloned().collect()
    }

    /// The value of `key` as text.
    pub(crate) fn text(&self, key: &str) -> Option<String> {
        self.entries.lock().unwrap().get(key).map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

#[async_trait]
impl StateStore for MapStore {
    fn describe(&self) -> String {
        "map".into()
    }

    fn durable(&self) -> bool {
        true
    }

    async fn open_queue(&self, name: &str, capacity: usize) -> Result<Arc<dyn DeliveryQueue>, StoreError> {
        MemoryStore.open_queue(name, capacity).await
    }

    async fn remove_queue(&self, _name: &str) -> Result<usize, StoreError> {
        Ok(0)
    }

    async fn load(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let entries = self.entries.lock().unwrap();
        Ok(entries.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    fn put(&self, key: &str, value: Vec<u8>) -> Commit {
        self.entries.lock().unwrap().insert(key.to_string(), value);
        Commit::done()
    }

    fn delete(&self, key: &str) -> Commit {
        self.entries.lock().unwrap().remove(key);
        Commit::done()
    }

    fn delete_prefix(&self, prefix: &str) -> Commit {
        self.entries.lock().unwrap().retain(|k, _| !k.starts_with(prefix));
        Commit::done()
    }

    fn health(&self) -> Result<(), String> {
        Ok(())
    }

    fn metrics(&self) -> StoreMetrics {
        StoreMetrics::default()
    }
}
