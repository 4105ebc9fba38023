//! The NATS JetStream store, for replicas (`--state nats://HOST:PORT`): what the leader kept is
//! continued by the replica that takes over.
//!
//! Delivery queues share one work-queue stream, `<prefix>-queues`, one subject and one durable
//! pull consumer per queue ([`queue`]); a delivery leaves the stream when its worker acks it.
//! Keys live in the KV bucket `<prefix>-state`, written with compare-and-set on the revision
//! this store last saw, so that a replica that lost a key to another cannot overwrite it.

mod keys;
mod kv;
mod queue;

use kv::{Done, KeyWrite, KvOp, read_latest, write_keys};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::connection::State;
use async_nats::jetstream::{self, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{Commit, StateStore, StoreError, StoreMetrics};
use crate::delivery::DeliveryQueue;

/// Default prefix of the stream and bucket names.
pub const DEFAULT_PREFIX: &str = "ktrigger";
/// Default time a popped delivery may go without news from its holder before JetStream hands it
/// out again.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
/// Default time the server may take to confirm a write.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest name prefix: stream, bucket and consumer names stay well within JetStream's limits.
const MAX_PREFIX: usize = 32;
/// How often stream and bucket sizes are read for metrics.
const SIZES_INTERVAL: Duration = Duration::from_secs(5);

/// How the store authenticates; secrets are read from files, never given on the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials.
    #[default]
    None,
    /// A user name, and a file holding the password.
    UserPassword {
        /// The user.
        user: String,
        /// The file holding the password.
        password_file: PathBuf,
    },
    /// A file holding a token.
    TokenFile(PathBuf),
    /// A NATS `.creds` file (JWT and NKey seed).
    CredsFile(PathBuf),
}

/// TLS towards the server, from PEM files; any of them turns TLS on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsTls {
    /// CA certificates the server's certificate must chain to; default the system's.
    pub ca: Option<PathBuf>,
    /// Client certificate, for servers that verify clients.
    pub cert: Option<PathBuf>,
    /// The client certificate's key.
    pub key: Option<PathBuf>,
}

impl NatsTls {
    fn enabled(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }
}

/// Where and how to reach NATS, and the names to use there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsOptions {
    /// Server URL, `nats://HOST:PORT` (or `tls://`).
    pub url: String,
    /// Prefix of the stream, bucket and subject names: `<prefix>-queues`, `<prefix>-state`.
    pub prefix: String,
    /// Credentials.
    pub auth: NatsAuth,
    /// TLS files.
    pub tls: NatsTls,
    /// How long a popped delivery may go without its holder's news before it is handed out again.
    pub ack_wait: Duration,
    /// How long the server may take to confirm a write.
    pub timeout: Duration,
}

impl NatsOptions {
    /// Options for the server at `url` with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        NatsOptions {
            url: url.into(),
            prefix: DEFAULT_PREFIX.to_string(),
            auth: NatsAuth::None,
            tls: NatsTls::default(),
            ack_wait: DEFAULT_ACK_WAIT,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    async fn connect_options(&self) -> Result<async_nats::ConnectOptions, StoreError> {
        let mut options = match &self.auth {
            NatsAuth::None => async_nats::ConnectOptions::new(),
            NatsAuth::UserPassword { user, password_file } => {
                let password = read_secret(password_file, "--state-password-file").await?;
                async_nats::ConnectOptions::with_user_and_password(user.clone(), password)
            }
            NatsAuth::TokenFile(path) => {
                async_nats::ConnectOptions::with_token(read_secret(path, "--state-token-file").await?)
            }
            NatsAuth::CredsFile(path) => async_nats::ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|error| unavailable(format!("--state-creds {}: {error}", path.display())))?,
        };
        if self.tls.enabled() {
            options = options.require_tls(true);
        }
        if let Some(ca) = &self.tls.ca {
            options = options.add_root_certificates(ca.clone());
        }
        match (&self.tls.cert, &self.tls.key) {
            (Some(cert), Some(key)) => options = options.add_client_certificate(cert.clone(), key.clone()),
            (None, None) => {}
            _ => return Err(unavailable("--state-tls-cert and --state-tls-key go together".into())),
        }
        Ok(options
            .name("ktrigger")
            .connection_timeout(self.timeout)
            .request_timeout(Some(self.timeout))
            .max_reconnects(None))
    }
}

async fn read_secret(path: &PathBuf, flag: &str) -> Result<String, StoreError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|error| unavailable(format!("{flag} {}: {}", path.display(), error.kind())))?;
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

fn unavailable(reason: String) -> StoreError {
    StoreError::Unavailable(reason)
}

/// Commit counts and latency, shared by everything that writes.
#[derive(Debug, Default)]
struct CommitStats {
    commits: AtomicU64,
    micros: AtomicU64,
}

impl CommitStats {
    fn record(&self, started: Instant) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.micros.fetch_add(micros, Ordering::Relaxed);
    }
}

/// What the store shares with its queues and background tasks.
struct Shared {
    client: async_nats::Client,
    js: jetstream::Context,
    queues: stream::Stream,
    state: stream::Stream,
    /// `$KV.<bucket>.`: the subject of a KV key follows.
    kv_subject: String,
    prefix: String,
    ack_wait: Duration,
    stats: CommitStats,
    bytes: AtomicU64,
    pending: AtomicU64,
    publishes: mpsc::UnboundedSender<Publish>,
}

/// A message to publish in order, and whom to tell once the server stored it.
struct Publish {
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
    done: Done,
    /// Called when the message was not stored.
    failed: Box<dyn FnOnce() + Send>,
}

impl Shared {
    /// Publishes to a stream; the commit resolves on the server's ack. Messages leave in the
    /// order of the calls, while their acks are awaited together.
    fn publish(&self, subject: String, headers: HeaderMap, payload: Bytes, failed: Box<dyn FnOnce() + Send>) -> Commit {
        let (done, result) = oneshot::channel();
        match self.publishes.send(Publish { subject, headers, payload, done, failed }) {
            Ok(()) => Commit::pending(result),
            Err(mpsc::error::SendError(publish)) => {
                (publish.failed)();
                Commit::failed(unavailable("the NATS store stopped".into()))
            }
        }
    }
}

/// Sends what [`Shared::publish`] was given, one after the other, and resolves each commit
/// when its ack arrives.
async fn publish_in_order(
    shared: Arc<Shared>,
    mut requests: mpsc::UnboundedReceiver<Publish>,
    stop: CancellationToken,
) {
    let mut acks = FuturesUnordered::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            request = requests.recv() => {
                let Some(Publish { subject, headers, payload, done, failed }) = request else { return };
                let started = Instant::now();
                let sent = shared.js.publish_with_headers(subject, headers, payload).await;
                acks.push(async move {
                    let stored = match sent {
                        Ok(ack) => ack.await.map(|_| ()),
                        Err(error) => Err(error),
                    };
                    (stored, started, done, failed)
                });
            }
            Some((stored, started, done, failed)) = acks.next(), if !acks.is_empty() => {
                let result = match stored {
                    Ok(()) => {
                        shared.stats.record(started);
                        Ok(())
                    }
                    Err(error) => {
                        failed();
                        Err(unavailable(format!("NATS did not store the delivery: {error}")))
                    }
                };
                let _ = done.send(result);
            }
        }
    }
}

/// The JetStream store. Cheap to share; background tasks stop when the last clone is dropped.
#[derive(Clone)]
pub struct NatsStore {
    shared: Arc<Shared>,
    url: String,
    writes: mpsc::UnboundedSender<KvOp>,
    _stop: Arc<DropGuard>,
}

impl std::fmt::Debug for NatsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsStore").field("url", &self.url).field("prefix", &self.shared.prefix).finish()
    }
}

impl NatsStore {
    /// Connects, and creates the stream and bucket unless they exist. Fails with a reason a user
    /// can act on when the server cannot be reached, refuses the credentials, or has no JetStream.
    pub async fn connect(options: NatsOptions) -> Result<Self, StoreError> {
        let prefix = &options.prefix;
        if prefix.is_empty()
            || prefix.len() > MAX_PREFIX
            || !prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(unavailable(format!(
                "--state-prefix {prefix:?}: use 1 to {MAX_PREFIX} letters, digits, '-' or '_'"
            )));
        }
        let url = redact(&options.url);
        let client = async_nats::connect_with_options(options.url.as_str(), options.connect_options().await?)
            .await
            .map_err(|error| unavailable(format!("cannot reach NATS at {url}: {error}")))?;
        if !client.server_info().jetstream {
            return Err(unavailable(format!(
                "the NATS server at {url} has JetStream disabled; start it with -js (or jetstream {{}} in its configuration)"
            )));
        }
        let mut js = jetstream::new(client.clone());
        js.set_timeout(options.timeout);
        let queues = js
            .get_or_create_stream(stream::Config {
                name: format!("{prefix}-queues"),
                description: Some("ktrigger delivery queues".into()),
                subjects: vec![format!("{prefix}.q.*")],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|error| unavailable(format!("NATS at {url}: stream {prefix}-queues: {error}")))?;
        let bucket = format!("{prefix}-state");
        // The stream of a KV bucket as NATS lays it out, so that `nats kv` tools can read it.
        let state = js
            .get_or_create_stream(stream::Config {
                name: format!("KV_{bucket}"),
                description: Some("ktrigger state".into()),
                subjects: vec![format!("$KV.{bucket}.>")],
                max_messages_per_subject: 1,
                discard: stream::DiscardPolicy::New,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                storage: stream::StorageType::File,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|error| unavailable(format!("NATS at {url}: bucket {bucket}: {error}")))?;
        let (publishes, published) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            client,
            js,
            queues,
            state,
            kv_subject: format!("$KV.{bucket}."),
            prefix: prefix.clone(),
            ack_wait: options.ack_wait,
            stats: CommitStats::default(),
            bytes: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            publishes,
        });
        let stop = CancellationToken::new();
        let (writes, requests) = mpsc::unbounded_channel();
        tokio::spawn(write_keys(shared.clone(), requests, stop.clone()));
        tokio::spawn(read_sizes(shared.clone(), stop.clone()));
        tokio::spawn(publish_in_order(shared.clone(), published, stop.clone()));
        Ok(NatsStore { shared, url, writes, _stop: Arc::new(stop.drop_guard()) })
    }

    fn send(&self, op: impl FnOnce(Done) -> KvOp) -> Commit {
        let (done, result) = oneshot::channel();
        if self.writes.send(op(done)).is_err() {
            return Commit::failed(unavailable("the NATS store stopped".into()));
        }
        Commit::pending(result)
    }

    /// Every entry whose KV key matches `filter`, latest values only, with their revisions.
    async fn entries(&self, filter: &str) -> Result<Vec<(String, Bytes, u64)>, StoreError> {
        let subject = format!("{}{filter}", self.shared.kv_subject);
        let read = read_latest(&self.shared.state, subject);
        tokio::time::timeout(LOAD_TIMEOUT, read)
            .await
            .map_err(|_| unavailable(format!("reading the state from NATS took longer than {LOAD_TIMEOUT:?}")))?
            .map(|entries| {
                entries
                    .into_iter()
                    .filter_map(|(subject, value, revision)| {
                        let key = subject.strip_prefix(&self.shared.kv_subject)?.to_string();
                        Some((key, value, revision))
                    })
                    .collect()
            })
    }
}

/// Longest a `load` may take before it counts as the store being unavailable.
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads the size of the stream and bucket for [`StateStore::metrics`] now and then.
async fn read_sizes(shared: Arc<Shared>, stop: CancellationToken) {
    let (mut queues, mut state) = (shared.queues.clone(), shared.state.clone());
    loop {
        if let (Ok(queues), Ok(state)) = (queues.info().await.cloned(), state.info().await.cloned()) {
            shared.bytes.store(queues.state.bytes.saturating_add(state.state.bytes), Ordering::Relaxed);
            shared.pending.store(queues.state.messages, Ordering::Relaxed);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SIZES_INTERVAL) => {}
        }
    }
}

/// The URL without a password or token in it, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_string(),
    }
}

#[async_trait]
impl StateStore for NatsStore {
    fn describe(&self) -> String {
        format!("NATS JetStream {} (stream {p}-queues, bucket {p}-state)", self.url, p = self.shared.prefix)
    }

    fn durable(&self) -> bool {
        true
    }

    async fn open_queue(&self, name: &str, capacity: usize) -> Result<Arc<dyn DeliveryQueue>, StoreError> {
        let queue = queue::JetStreamQueue::open(self.shared.clone(), name, capacity).await?;
        Ok(Arc::new(queue))
    }

    async fn remove_queue(&self, name: &str) -> Result<usize, StoreError> {
        queue::remove(&self.shared, name).await
    }

    async fn load(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let entries = self.entries(&keys::filter(prefix)).await?;
        let mut seen = Vec::with_capacity(entries.len());
        let mut loaded = BTreeMap::new();
        for (encoded, value, revision) in entries {
            let Some(key) = keys::decode(&encoded) else { continue };
            if key.starts_with(prefix) {
                seen.push((encoded, revision));
                loaded.insert(key, value.to_vec());
            }
        }
        let _ = self.writes.send(KvOp::Seen(seen));
        Ok(loaded.into_iter().collect())
    }

    fn put(&self, key: &str, value: Vec<u8>) -> Commit {
        self.send(|done| KvOp::Write(KeyWrite::Put { key: key.to_string(), value, done }))
    }

    fn delete(&self, key: &str) -> Commit {
        self.send(|done| KvOp::Write(KeyWrite::Delete { key: key.to_string(), done }))
    }

    fn delete_prefix(&self, prefix: &str) -> Commit {
        self.send(|done| KvOp::DeletePrefix { prefix: prefix.to_string(), done })
    }

    fn health(&self) -> Result<(), String> {
        match self.shared.client.connection_state() {
            State::Connected => Ok(()),
            State::Pending | State::Disconnected => Err(format!("NATS at {} is unreachable; reconnecting", self.url)),
        }
    }

    fn metrics(&self) -> StoreMetrics {
        let stats = &self.shared.stats;
        StoreMetrics {
            bytes: self.shared.bytes.load(Ordering::Relaxed),
            pending_deliveries: self.shared.pending.load(Ordering::Relaxed),
            commits: stats.commits.load(Ordering::Relaxed),
            commit_seconds: stats.micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}
