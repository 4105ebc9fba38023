//! The store that keeps nothing: deliveries wait in memory and are lost on restart
//! (`--state-dir none`, `--dry-run`).

use std::sync::Arc;

use async_trait::async_trait;

use super::{Commit, StateStore, StoreError, StoreMetrics};
use crate::delivery::{DeliveryQueue, MemoryQueue};

/// Keeps nothing; every write is done at once.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryStore;

#[async_trait]
impl StateStore for MemoryStore {
    fn describe(&self) -> String {
        "memory".into()
    }

    fn durable(&self) -> bool {
        false
    }

    async fn open_queue(&self, _name: &str, capacity: usize) -> Result<Arc<dyn DeliveryQueue>, StoreError> {
        Ok(Arc::new(MemoryQueue::new(capacity)))
    }

    async fn remove_queue(&self, _name: &str) -> Result<usize, StoreError> {
        Ok(0)
    }

    async fn load(&self, _prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(Vec::new())
    }

    fn put(&self, _key: &str, _value: Vec<u8>) -> Commit {
        Commit::done()
    }

    fn delete(&self, _key: &str) -> Commit {
        Commit::done()
    }

    fn delete_prefix(&self, _prefix: &str) -> Commit {
        Commit::done()
    }

    fn health(&self) -> Result<(), String> {
        Ok(())
    }

    fn metrics(&self) -> StoreMetrics {
        StoreMetrics::default()
    }
}
