//! The embedded store: one redb file (`state.redb`) under `--state-dir`.
//!
//! One writer thread owns every write: it takes all the writes waiting, applies them in one
//! transaction and commits once (group commit), then tells each writer. Reads (start-up loads)
//! use their own read transactions. A file that cannot be opened as a store of this version is
//! moved aside, never deleted, and a fresh one started.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redb::{Database, DatabaseError, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore, oneshot};

use super::{Commit, SCHEMA_VERSION, StateStore, StoreError, StoreMetrics};
use crate::delivery::{Delivery, DeliveryQueue, QueueError};
use crate::event::{Event, TriggerId};
use crate::sync::lock;

/// Deliveries: (queue name, sequence number) → a [`StoredDelivery`] as JSON.
const DELIVERIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("deliveries");
/// What triggers remember: key → bytes.
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
/// The store's own facts (its schema version).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Name of the file under the state directory.
pub const FILE_NAME: &str = "state.redb";
/// Most writes applied in one transaction.
const MAX_BATCH: usize = 8192;
/// How often a store whose writes fail tries again without being asked to write.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// Memory redb may keep of the file (pages read, and writes not yet flushed, at most half of
/// it). Its default, 1 GiB, would let a long-running process hold most of a large file.
const CACHE_BYTES: usize = 16 * 1024 * 1024;
/// Reads (start-up loads) made at once, each on a blocking thread; more wait for a turn. When
/// 1,000 triggers started together, unbounded reads had tokio start 20 to 200 threads (more the
/// busier the machine), each with its stack and allocator cache, for reads of a few milliseconds.
const READERS: usize = 4;

/// One delivery as stored.
#[derive(Debug, Serialize, Deserialize)]
struct StoredDelivery {
    id: String,
    trigger: TriggerId,
    event: Event,
    attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not_before: Option<DateTime<Utc>>,
}

impl StoredDelivery {
    fn encode(delivery: &Delivery) -> Vec<u8> {
        let stored = StoredDeliveryRef {
            id: &delivery.id,
            trigger: &delivery.trigger,
            event: &delivery.event,
            attempts: delivery.attempts,
            not_before: delivery.not_before,
        };
        serde_json::to_vec(&stored).unwrap_or_default()
    }

    fn into_delivery(self) -> Delivery {
        Delivery {
            id: self.id,
            trigger: self.trigger,
            event: Arc::new(self.event),
            fired_at: std::time::Instant::now(),
            attempts: self.attempts,
            not_before: self.not_before,
            charge: None,
            span: tracing::Span::none(),
        }
    }
}

/// [`StoredDelivery`] borrowing from a live delivery, to encode it without copying the event.
#[derive(Serialize)]
struct StoredDeliveryRef<'a> {
    id: &'a str,
    trigger: &'a TriggerId,
    event: &'a Event,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    not_before: Option<DateTime<Utc>>,
}

enum Write {
    Put(String, Vec<u8>),
    Delete(String),
    DeletePrefix(String),
    PutDelivery(String, u64, Vec<u8>),
    RemoveDelivery(String, u64),
    RemoveQueue(String),
}

struct Request {
    write: Write,
    done: Option<oneshot::Sender<Result<(), StoreError>>>,
}

/// What the writer thread and the handles share.
struct Shared {
    /// `None` after a failed write closed it, until the writer opens it again.
    database: RwLock<Option<Database>>,
    path: PathBuf,
    /// Why the last commit failed, until one succeeds again.
    failing: Mutex<Option<String>>,
    commits: AtomicU64,
    commit_micros: AtomicU64,
    pending_deliveries: AtomicU64,
    /// Queues opened in this process, by name: a trigger restarted with a new spec takes over
    /// the queue its previous run still holds instead of loading the same deliveries twice.
    queues: Mutex<HashMap<String, Arc<QueueShared>>>,
    /// Turns to read, [`READERS`] at once.
    readers: Arc<Semaphore>,
}

/// Why opening the store's file did not simply work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedAside {
    /// Where the old file is now.
    pub to: PathBuf,
    /// Why it could not be used.
    pub reason: String,
}

/// The redb store. Cheap to clone.
#[derive(Clone)]
pub struct RedbStore {
    shared: Arc<Shared>,
    writes: mpsc::Sender<Request>,
}

impl RedbStore {
    /// Opens (or creates) `state.redb` under `dir`. A file that is not a readable store of this
    /// schema version is moved aside and a fresh one started: the second value says where and
    /// why. A file another process holds open is an error.
    pub fn open(dir: &Path) -> Result<(RedbStore, Option<MovedAside>), StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create the state directory {}: {e}", dir.display()))
        })?;
        let path = dir.join(FILE_NAME);
        let (database, moved) = match open_checked(&path) {
            Ok(database) => (database, None),
            Err(Unusable::Locked(message)) => return Err(StoreError::Unavailable(message)),
            Err(Unusable::Invalid(reason)) => {
                let to = aside_path(&path);
                std::fs::rename(&path, &to).map_err(|e| {
                    StoreError::Unavailable(format!(
                        "{} cannot be used ({reason}) and cannot be moved aside: {e}",
                        path.display()
                    ))
                })?;
                tracing::error!(file = %path.display(), moved_to = %to.display(), %reason,
                    "state file cannot be used; moved aside, starting a fresh one");
                let database = open_checked(&path).map_err(|e| StoreError::Unavailable(e.to_string()))?;
                (database, Some(MovedAside { to, reason }))
            }
        };
        let pending = count_deliveries(&database)?;
        let shared = Arc::new(Shared {
            database: RwLock::new(Some(database)),
            path,
            failing: Mutex::new(None),
            commits: AtomicU64::new(0),
            commit_micros: AtomicU64::new(0),
            pending_deliveries: AtomicU64::new(pending),
            queues: Mutex::new(HashMap::new()),
            readers: Arc::new(Semaphore::new(READERS)),
        });
        let (writes, requests) = mpsc::channel();
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("ktrigger-state".into())
            .spawn(move || write_loop(&writer, &requests))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the state writer: {e}")))?;
        Ok((RedbStore { shared, writes }, moved))
    }

    fn send(&self, write: Write, wait: bool) -> Commit {
        let (done, receiver) = if wait {
            let (sender, receiver) = oneshot::channel();
            (Some(sender), Some(receiver))
        } else {
            (None, None)
        };
        if self.writes.send(Request { write, done }).is_err() {
            return Commit::failed(StoreError::Unavailable("the state writer stopped".into()));
        }
        receiver.map_or_else(Commit::done, Commit::pending)
    }

    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let shared = self.shared.clone();
        let turn = shared.readers.clone().acquire_owned().await.map_err(unavailable)?;
        tokio::task::spawn_blocking(move || {
            // Held until the read has really returned, also when its caller stopped waiting.
            let _turn = turn;
            let database = crate::sync::read(&shared.database);
            match database.as_ref() {
                Some(database) => read(database),
                None => Err(StoreError::Unavailable("the state file is being reopened after a failed write".into())),
            }
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("state read failed: {e}")))?
    }
}

enum Unusable {
    /// Another process has it open.
    Locked(String),
    /// Not a store of this version.
    Invalid(String),
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unusable::Locked(message) | Unusable::Invalid(message) => f.write_str(message),
        }
    }
}

/// Opens the file and checks (or, when new, writes) its schema version.
fn open_checked(path: &Path) -> Result<Database, Unusable> {
    let database = Database::builder().set_cache_size(CACHE_BYTES).create(path).map_err(|error| match error {
        DatabaseError::DatabaseAlreadyOpen => {
            Unusable::Locked(format!("{} is in use by another ktrigger process", path.display()))
        }
        DatabaseError::Storage(redb::StorageError::Io(e)) if e.kind() != std::io::ErrorKind::InvalidData => {
            Unusable::Locked(format!("cannot open {}: {e}", path.display()))
        }
        other => Unusable::Invalid(other.to_string()),
    })?;
    let invalid = |e: &dyn std::fmt::Display| Unusable::Invalid(e.to_string());
    let write = database.begin_write().map_err(|e| invalid(&e))?;
    {
        let mut meta = write.open_table(META).map_err(|e| invalid(&e))?;
        let found = meta.get("schema").map_err(|e| invalid(&e))?.map(|v| v.value());
        match found {
            Some(version) if version == u64::from(SCHEMA_VERSION) => {}
            Some(version) => {
                return Err(Unusable::Invalid(format!(
                    "schema version {version}, this ktrigger reads version {SCHEMA_VERSION}"
                )));
            }
            None => {
                meta.insert("schema", u64::from(SCHEMA_VERSION)).map_err(|e| invalid(&e))?;
            }
        }
        write.open_table(DELIVERIES).map_err(|e| invalid(&e))?;
        write.open_table(STATE).map_err(|e| invalid(&e))?;
    }
    write.commit().map_err(|e| invalid(&e))?;
    Ok(database)
}

fn aside_path(path: &Path) -> PathBuf {
    let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".unusable-{stamp}"));
    path.with_file_name(name)
}

fn count_deliveries(database: &Database) -> Result<u64, StoreError> {
    let read = database.begin_read().map_err(unavailable)?;
    let table = read.open_table(DELIVERIES).map_err(unavailable)?;
    table.len().map_err(unavailable)
}

fn unavailable(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

/// Takes every write waiting, commits them together, answers each; until the channel closes.
/// After a failed commit (disk full, I/O error) redb must be reopened: the writer does so before
/// its next batch, and at least every [`RETRY_AFTER_FAILURE`] meanwhile, so that health comes
/// back as soon as writes work again.
fn write_loop(shared: &Shared, requests: &mpsc::Receiver<Request>) {
    loop {
        let failing = lock(&shared.failing).is_some();
        let first = if failing {
            match requests.recv_timeout(RETRY_AFTER_FAILURE) {
                Ok(request) => Some(request),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match requests.recv() {
                Ok(request) => Some(request),
                Err(_) => return,
            }
        };
        if failing {
            reopen(shared);
        }
        let Some(first) = first else { continue };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let result = {
            let database = crate::sync::read(&shared.database);
            match database.as_ref() {
                Some(database) => apply(database, &batch),
                None => Err(StoreError::Unavailable(
                    lock(&shared.failing).clone().unwrap_or_else(|| "the state file is not open".into()),
                )),
            }
        };
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        shared.commits.fetch_add(1, Ordering::Relaxed);
        shared.commit_micros.fetch_add(micros, Ordering::Relaxed);
        match &result {
            Ok(delta) => {
                if lock(&shared.failing).take().is_some() {
                    tracing::info!(file = %shared.path.display(), "state store writes work again");
                }
                let pending = shared.pending_deliveries.load(Ordering::Relaxed);
                shared.pending_deliveries.store(pending.saturating_add_signed(*delta), Ordering::Relaxed);
            }
            Err(error) => {
                let mut failing = lock(&shared.failing);
                if failing.is_none() {
                    tracing::error!(file = %shared.path.display(), %error,
                        "state store cannot write; nothing more is acknowledged until it can");
                }
                *failing = Some(error.to_string());
            }
        }
        for request in batch {
            if let Some(done) = request.done {
                let _ = done.send(result.as_ref().map(|_| ()).map_err(Clone::clone));
            }
        }
    }
}

/// Closes the database after a failed write and opens it again; health comes back when that
/// works (opening commits, so it proves writes work).
fn reopen(shared: &Shared) {
    let mut database = crate::sync::write(&shared.database);
    // The file lock is released only when the old handle is dropped.
    *database = None;
    match open_checked(&shared.path) {
        Ok(reopened) => {
            *database = Some(reopened);
            if lock(&shared.failing).take().is_some() {
                tracing::info!(file = %shared.path.display(), "state store writes work again");
            }
        }
        Err(error) => *lock(&shared.failing) = Some(error.to_string()),
    }
}

/// Applies a batch in one transaction; the change in the number of stored deliveries.
fn apply(database: &Database, batch: &[Request]) -> Result<i64, StoreError> {
    let write = database.begin_write().map_err(unavailable)?;
    let mut delta: i64 = 0;
    {
        let mut deliveries = write.open_table(DELIVERIES).map_err(unavailable)?;
        let mut state = write.open_table(STATE).map_err(unavailable)?;
        for request in batch {
            match &request.write {
                Write::Put(key, value) => {
                    state.insert(key.as_str(), value.as_slice()).map_err(unavailable)?;
                }
                Write::Delete(key) => {
                    state.remove(key.as_str()).map_err(unavailable)?;
                }
                Write::DeletePrefix(prefix) => {
                    let mut keys = Vec::new();
                    for entry in state.range(prefix.as_str()..).map_err(unavailable)? {
                        let (key, _) = entry.map_err(unavailable)?;
                        if !key.value().starts_with(prefix.as_str()) {
                            break;
                        }
                        keys.push(key.value().to_string());
                    }
                    for key in keys {
                        state.remove(key.as_str()).map_err(unavailable)?;
                    }
                }
                Write::PutDelivery(queue, seq, value) => {
                    if deliveries.insert((queue.as_str(), *seq), value.as_slice()).map_err(unavailable)?.is_none() {
                        delta = delta.saturating_add(1);
                    }
                }
                Write::RemoveDelivery(queue, seq) => {
                    if deliveries.remove((queue.as_str(), *seq)).map_err(unavailable)?.is_some() {
                        delta = delta.saturating_sub(1);
                    }
                }
                Write::RemoveQueue(queue) => {
                    let mut seqs = Vec::new();
                    for entry in
                        deliveries.range((queue.as_str(), 0)..=(queue.as_str(), u64::MAX)).map_err(unavailable)?
                    {
                        let (key, _) = entry.map_err(unavailable)?;
                        seqs.push(key.value().1);
                    }
                    for seq in seqs {
                        deliveries.remove((queue.as_str(), seq)).map_err(unavailable)?;
                        delta = delta.saturating_sub(1);
                    }
                }
            }
        }
    }
    write.commit().map_err(unavailable)?;
    Ok(delta)
}

#[async_trait]
impl StateStore for RedbStore {
    fn describe(&self) -> String {
        format!("redb {}", self.shared.path.display())
    }

    fn durable(&self) -> bool {
        true
    }

    async fn open_queue(&self, name: &str, capacity: usize) -> Result<Arc<dyn DeliveryQueue>, StoreError> {
        let existing = lock(&self.shared.queues).get(name).cloned();
        let queue = match existing {
            Some(queue) => queue,
            None => {
                let owned = name.to_string();
                let stored = self
                    .read(move |database| {
                        let read = database.begin_read().map_err(unavailable)?;
                        let table = read.open_table(DELIVERIES).map_err(unavailable)?;
                        let mut found = Vec::new();
                        for entry in
                            table.range((owned.as_str(), 0)..=(owned.as_str(), u64::MAX)).map_err(unavailable)?
                        {
                            let (key, value) = entry.map_err(unavailable)?;
                            found.push((key.value().1, value.value().to_vec()));
                        }
                        Ok(found)
                    })
                    .await?;
                let mut waiting = VecDeque::with_capacity(stored.len());
                let mut next_seq = 0;
                for (seq, bytes) in stored {
                    next_seq = seq.saturating_add(1);
                    match serde_json::from_slice::<StoredDelivery>(&bytes) {
                        Ok(stored) => waiting.push_back((seq, stored.into_delivery())),
                        Err(error) => {
                            tracing::error!(queue = name, seq, %error, "a stored delivery cannot be read; dropped");
                            let _ = self.send(Write::RemoveDelivery(name.to_string(), seq), false);
                        }
                    }
                }
                let queue = Arc::new(QueueShared {
                    name: name.to_string(),
                    inner: Mutex::new(QueueInner { waiting, in_flight: HashMap::new(), next_seq, owner: 0 }),
                    ready: Notify::new(),
                });
                lock(&self.shared.queues).insert(name.to_string(), queue.clone());
                queue
            }
        };
        let handle = {
            let mut inner = lock(&queue.inner);
            inner.owner = inner.owner.wrapping_add(1);
            inner.owner
        };
        queue.ready.notify_waiters();
        Ok(Arc::new(RedbQueue { store: self.clone(), queue, handle, capacity, closed: AtomicBool::new(false) }))
    }

    async fn remove_queue(&self, name: &str) -> Result<usize, StoreError> {
        let removed = lock(&self.shared.queues).remove(name).map_or(0, |queue| lock(&queue.inner).waiting.len());
        self.send(Write::RemoveQueue(name.to_string()), true).wait().await?;
        Ok(removed)
    }

    async fn load(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = prefix.to_string();
        self.read(move |database| {
            let read = database.begin_read().map_err(unavailable)?;
            let table = read.open_table(STATE).map_err(unavailable)?;
            let mut found = Vec::new();
            for entry in table.range(prefix.as_str()..).map_err(unavailable)? {
                let (key, value) = entry.map_err(unavailable)?;
                if !key.value().starts_with(prefix.as_str()) {
                    break;
                }
                found.push((key.value().to_string(), value.value().to_vec()));
            }
            Ok(found)
        })
        .await
    }

    fn put(&self, key: &str, value: Vec<u8>) -> Commit {
        self.send(Write::Put(key.to_string(), value), true)
    }

    fn delete(&self, key: &str) -> Commit {
        self.send(Write::Delete(key.to_string()), true)
    }

    fn delete_prefix(&self, prefix: &str) -> Commit {
        self.send(Write::DeletePrefix(prefix.to_string()), true)
    }

    fn health(&self) -> Result<(), String> {
        match lock(&self.shared.failing).as_ref() {
            Some(reason) => Err(format!("state store {} cannot write: {reason}", self.shared.path.display())),
            None => Ok(()),
        }
    }

    fn metrics(&self) -> StoreMetrics {
        StoreMetrics {
            bytes: std::fs::metadata(&self.shared.path).map(|m| m.len()).unwrap_or(0),
            pending_deliveries: self.shared.pending_deliveries.load(Ordering::Relaxed),
            commits: self.shared.commits.load(Ordering::Relaxed),
            commit_seconds: self.shared.commit_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// A queue's deliveries in this process, shared by the handles of successive runs of a trigger.
struct QueueShared {
    name: String,
    inner: Mutex<QueueInner>,
    ready: Notify,
}

struct QueueInner {
    /// Deliveries waiting, with their sequence numbers, oldest first.
    waiting: VecDeque<(u64, Delivery)>,
    /// Popped and not yet acked: delivery id → sequence number.
    in_flight: HashMap<String, u64>,
    next_seq: u64,
    /// The newest handle; older handles stop popping once closed.
    owner: u64,
}

/// One run's handle on a stored queue.
struct RedbQueue {
    store: RedbStore,
    queue: Arc<QueueShared>,
    handle: u64,
    capacity: usize,
    closed: AtomicBool,
}

#[async_trait]
impl DeliveryQueue for RedbQueue {
    fn push(&self, delivery: Delivery) -> Result<Commit, QueueError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(QueueError::Closed);
        }
        let bytes = StoredDelivery::encode(&delivery);
        let mut inner = lock(&self.queue.inner);
        let held = inner.waiting.len().saturating_add(inner.in_flight.len());
        if held >= self.capacity {
            return Err(QueueError::Full(held));
        }
        let seq = inner.next_seq;
        inner.next_seq = seq.saturating_add(1);
        // Sent under the lock, so the write is queued before any ack of this delivery can be.
        let commit = self.store.send(Write::PutDelivery(self.queue.name.clone(), seq, bytes), true);
        inner.waiting.push_back((seq, delivery));
        drop(inner);
        self.queue.ready.notify_one();
        Ok(commit)
    }

    async fn pop(&self) -> Option<Delivery> {
        loop {
            let notified = self.queue.ready.notified();
            {
                let mut inner = lock(&self.queue.inner);
                let closed = self.closed.load(Ordering::Acquire);
                // A closed handle that a newer run took over leaves the rest to that run.
                if closed && inner.owner != self.handle {
                    return None;
                }
                if let Some((seq, delivery)) = inner.waiting.pop_front() {
                    inner.in_flight.insert(delivery.id.clone(), seq);
                    return Some(delivery);
                }
                if closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    fn record_attempt(&self, delivery: &Delivery, attempts: u32, next: DateTime<Utc>) {
        let Some(seq) = lock(&self.queue.inner).in_flight.get(&delivery.id).copied() else { return };
        let mut stored = delivery.clone();
        stored.attempts = attempts;
        stored.not_before = Some(next);
        let bytes = StoredDelivery::encode(&stored);
        let _ = self.store.send(Write::PutDelivery(self.queue.name.clone(), seq, bytes), false);
    }

    fn ack(&self, id: &str) {
        let removed = lock(&self.queue.inner).in_flight.remove(id);
        if let Some(seq) = removed {
            let _ = self.store.send(Write::RemoveDelivery(self.queue.name.clone(), seq), false);
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.queue.ready.notify_waiters();
    }

    fn len(&self) -> usize {
        lock(&self.queue.inner).waiting.len()
    }

    fn in_flight(&self) -> usize {
        lock(&self.queue.inner).in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_run_a_few_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = RedbStore::open(dir.path()).unwrap();
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let reads = (0..16).map(|_| {
            let (store, running, most) = (store.clone(), running.clone(), most.clone());
            async move {
                store
                    .read(move |_| {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(50));
                        running.fetch_sub(1, Ordering::SeqCst);
                        Ok(())
                    })
                    .await
            }
        });
        let results = futures::future::join_all(reads).await;
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(most.load(Ordering::SeqCst), READERS);
    }
}
