//! The state store: where deliveries wait and what triggers remember (dedup windows, pending
//! debounce events, source positions), so that restarts, crashes and failover lose nothing.
//!
//! Three backends implement [`StateStore`]: [`memory`] keeps nothing (`--state-dir none`),
//! [`redb`] keeps one file under `--state-dir` and commits concurrent writes together, and NATS
//! JetStream serves replicas. Writes return a [`Commit`] that resolves once the write is durable:
//! a source's position is committed, and a sender told its event was accepted, only after every
//! write the event caused has resolved.

pub mod memory;
pub mod nats;
pub mod redb;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::oneshot;

use crate::delivery::DeliveryQueue;
use crate::event::TriggerId;

/// Version of the layout of stored data; a store written with another is moved aside.
pub const SCHEMA_VERSION: u32 = 1;

/// Why the store could not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store cannot take writes now (disk full, server unreachable); retrying later may work.
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// Another replica wrote the key since this store last read it: the write was refused, so
    /// that two replicas never both own a key.
    #[error("state store: write conflict: {0}")]
    Conflict(String),
    /// Stored data that cannot be read back.
    #[error("state store: invalid stored data: {0}")]
    Invalid(String),
}

/// A write on its way to the store: resolves once it is durable, or failed.
#[derive(Debug)]
pub struct Commit(CommitState);

#[derive(Debug)]
enum CommitState {
    Done(Result<(), StoreError>),
    Pending(oneshot::Receiver<Result<(), StoreError>>),
}

impl Commit {
    /// A write that needed nothing (memory store) or is already durable.
    pub fn done() -> Self {
        Commit(CommitState::Done(Ok(())))
    }

    /// A write that failed before it was sent.
    pub fn failed(error: StoreError) -> Self {
        Commit(CommitState::Done(Err(error)))
    }

    /// A write that resolves when the store sends its result on the other end.
    pub fn pending(result: oneshot::Receiver<Result<(), StoreError>>) -> Self {
        Commit(CommitState::Pending(result))
    }

    /// The result, when it is known without waiting.
    pub fn result_now(&self) -> Option<Result<(), StoreError>> {
        match &self.0 {
            CommitState::Done(result) => Some(result.clone()),
            CommitState::Pending(_) => None,
        }
    }

    /// Waits until the write is durable.
    pub async fn wait(self) -> Result<(), StoreError> {
        match self.0 {
            CommitState::Done(result) => result,
            CommitState::Pending(receiver) => receiver.await.unwrap_or_else(|_| {
                Err(StoreError::Unavailable("the store stopped before the write completed".into()))
            }),
        }
    }

    /// Waits for every write of `commits`; the first error, if any.
    pub async fn wait_all(commits: Vec<Commit>) -> Result<(), StoreError> {
        let mut outcome = Ok(());
        for commit in commits {
            if let Err(error) = commit.wait().await
                && outcome.is_ok()
            {
                outcome = Err(error);
            }
        }
        outcome
    }
}

/// Figures about a store for metrics, status and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StoreMetrics {
    /// Bytes the store takes (file size, or stream and bucket bytes).
    pub bytes: u64,
    /// Deliveries stored and not yet delivered or dead-lettered.
    pub pending_deliveries: u64,
    /// Commits done since start.
    pub commits: u64,
    /// Sum of the latency of those commits, in seconds.
    pub commit_seconds: f64,
}

/// Where deliveries wait and what triggers remember.
///
/// Keys are plain strings; each trigger's keys start with [`trigger_prefix`], so that forgetting
/// a trigger removes all it kept.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// What the store is, for logs: `memory`, `redb /var/lib/ktrigger/state.redb`, a NATS URL.
    fn describe(&self) -> String;

    /// Whether anything survives a restart.
    fn durable(&self) -> bool;

    /// Opens the delivery queue `name` with the deliveries stored in it, oldest first.
    async fn open_queue(&self, name: &str, capacity: usize) -> Result<Arc<dyn DeliveryQueue>, StoreError>;

    /// Removes queue `name` and every delivery in it; how many were removed.
    async fn remove_queue(&self, name: &str) -> Result<usize, StoreError>;

    /// Every key starting with `prefix`, with its value, in key order.
    async fn load(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Stores `value` under `key`.
    fn put(&self, key: &str, value: Vec<u8>) -> Commit;

    /// Removes `key`.
    fn delete(&self, key: &str) -> Commit;

    /// Removes every key starting with `prefix`.
    fn delete_prefix(&self, prefix: &str) -> Commit;

    /// `Err` with why while the store cannot take writes: what `/readyz` reports.
    fn health(&self) -> Result<(), String>;

    /// Size, pending deliveries and commit latency.
    fn metrics(&self) -> StoreMetrics;
}

/// The prefix of every key `trigger` keeps: `{namespace}/{service}/{trigger}/`.
pub fn trigger_prefix(trigger: &TriggerId) -> String {
    format!("{}/{}/{}/", trigger.namespace, trigger.service, trigger.trigger)
}

/// What one trigger's source remembers across restarts, under its own keys (the source's
/// position: resourceVersions, fired Event counts, last cron run, change-detection state).
#[derive(Clone)]
pub struct SourceState {
    store: Arc<dyn StateStore>,
    prefix: String,
}

impl std::fmt::Debug for SourceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceState").field("store", &self.store.describe()).field("prefix", &self.prefix).finish()
    }
}

impl Default for SourceState {
    /// Remembers nothing.
    fn default() -> Self {
        SourceState { store: Arc::new(memory::MemoryStore), prefix: String::new() }
    }
}

impl SourceState {
    /// The source state of `trigger` in `store`.
    pub fn new(store: Arc<dyn StateStore>, trigger: &TriggerId) -> Self {
        SourceState { store, prefix: format!("{}source/", trigger_prefix(trigger)) }
    }

    /// Whether anything put here survives a restart; a source may skip building its
    /// checkpoints when not.
    pub fn durable(&self) -> bool {
        self.store.durable()
    }

    /// Everything the source stored, keys without the trigger's prefix.
    pub async fn load(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let entries = self.store.load(&self.prefix).await?;
        Ok(entries
            .into_iter()
            .filter_map(|(key, value)| key.strip_prefix(&self.prefix).map(|key| (key.to_string(), value)))
            .collect())
    }

    /// Stores `value` under `key`.
    pub fn put(&self, key: &str, value: Vec<u8>) -> Commit {
        self.store.put(&format!("{}{key}", self.prefix), value)
    }

    /// Removes `key`.
    pub fn delete(&self, key: &str) -> Commit {
        self.store.delete(&format!("{}{key}", self.prefix))
    }

    /// Removes everything the source stored.
    pub fn clear(&self) -> Commit {
        self.store.delete_prefix(&self.prefix)
    }
}
