//! The KV bucket: keys written with compare-and-set on the revision this store last saw.
//!
//! A write that the server may or may not have stored (it timed out, the connection dropped)
//! leaves its key unsure; the next write of that key first reads what the server holds and
//! goes on only if it is what this store had, or what it wrote.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::{self, LastRawMessageErrorKind};
use async_nats::jetstream::{self};
use async_nats::{HeaderMap, header};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Shared, keys, unavailable};
use crate::state::StoreError;

/// The last message of every subject matching `subject` in `stream`: subject, payload and
/// sequence; delete and purge markers left out.
pub(super) async fn read_latest(
    stream: &stream::Stream,
    subject: String,
) -> Result<Vec<(String, Bytes, u64)>, StoreError> {
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: subject,
            deliver_policy: jetstream::consumer::DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .map_err(|error| unavailable(format!("reading the state from NATS: {error}")))?;
    let mut entries = Vec::new();
    if consumer.cached_info().num_pending == 0 {
        return Ok(entries);
    }
    let mut messages =
        consumer.messages().await.map_err(|error| unavailable(format!("reading the state from NATS: {error}")))?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|error| unavailable(format!("reading the state from NATS: {error}")))?;
        let info = message.info().map_err(|error| StoreError::Invalid(error.to_string()))?;
        let (sequence, pending) = (info.stream_sequence, info.pending);
        let deleted = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get("KV-Operation"))
            .is_some_and(|operation| matches!(operation.as_str(), "DEL" | "PURGE"));
        if !deleted {
            entries.push((message.subject.to_string(), message.payload.clone(), sequence));
        }
        if pending == 0 {
            break;
        }
    }
    Ok(entries)
}

/// A request to the KV writer, in the order the store was asked.
pub(super) enum KvOp {
    Write(KeyWrite),
    DeletePrefix {
        prefix: String,
        done: Done,
    },
    /// Revisions read by `load`: from now on this store writes over them.
    Seen(Vec<(String, u64)>),
}

/// A write of one key.
pub(super) enum KeyWrite {
    Put { key: String, value: Vec<u8>, done: Done },
    Delete { key: String, done: Done },
}

pub(super) type Done = oneshot::Sender<Result<(), StoreError>>;

/// What this store knows of a key it wrote or read; a key it knows nothing of is absent.
#[derive(Debug, Clone)]
enum Known {
    /// The key is at this revision.
    At(u64),
    /// A write whose outcome is unknown: the revision before it, and the value it wrote (none
    /// for a delete).
    Unsure { before: Option<u64>, wrote: Option<Bytes> },
}

/// What a finished write leaves known of its key: `None` to leave it as it was.
type After = Option<Option<Known>>;

/// A finished write: its KV key (`None` for a prefix), the result, what is known of the key
/// now, and whom to tell.
type Written = (Option<String>, Result<(), StoreError>, After, Done);

/// Applies KV writes: writes to different keys travel together, writes to one key one after
/// the other (each needs the revision the one before made). Deleting a prefix waits for every
/// write before it, and the writes after it wait for it.
pub(super) async fn write_keys(
    shared: Arc<Shared>,
    mut requests: mpsc::UnboundedReceiver<KvOp>,
    stop: CancellationToken,
) {
    let mut revisions: HashMap<String, Known> = HashMap::new();
    let mut in_flight: FuturesUnordered<BoxFuture<'static, Written>> = FuturesUnordered::new();
    // Keys with a write in flight, and the writes waiting behind it.
    let mut busy: HashMap<String, VecDeque<KeyWrite>> = HashMap::new();
    let mut held: Option<(String, Done)> = None;
    let mut prefix_running = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            request = requests.recv(), if held.is_none() && !prefix_running => {
                let Some(op) = request else { return };
                match op {
                    KvOp::Seen(seen) => {
                        for (key, revision) in seen {
                            let newer = match revisions.get(&key) {
                                Some(Known::At(known)) => (*known).max(revision),
                                Some(Known::Unsure { .. }) | None => revision,
                            };
                            revisions.insert(key, Known::At(newer));
                        }
                    }
                    KvOp::DeletePrefix { prefix, done } if in_flight.is_empty() => {
                        prefix_running = true;
                        in_flight.push(delete_prefix(shared.clone(), prefix, &mut revisions, done));
                    }
                    KvOp::DeletePrefix { prefix, done } => held = Some((prefix, done)),
                    KvOp::Write(write) => {
                        let key = write.encoded_key();
                        match busy.get_mut(&key) {
                            Some(waiting) => waiting.push_back(write),
                            None => {
                                busy.insert(key, VecDeque::new());
                                in_flight.push(start(&shared, write, &revisions));
                            }
                        }
                    }
                }
            }
            Some((key, result, after, done)) = in_flight.next(), if !in_flight.is_empty() => {
                match (&key, after) {
                    (Some(key), Some(Some(known))) => { revisions.insert(key.clone(), known); }
                    (Some(key), Some(None)) => { revisions.remove(key); }
                    (_, None) | (None, _) => {}
                }
                let _ = done.send(result);
                match key {
                    None => prefix_running = false,
                    Some(key) => match busy.get_mut(&key).and_then(VecDeque::pop_front) {
                        Some(next) => in_flight.push(start(&shared, next, &revisions)),
                        None => { busy.remove(&key); }
                    },
                }
                if in_flight.is_empty() && let Some((prefix, done)) = held.take() {
                    prefix_running = true;
                    in_flight.push(delete_prefix(shared.clone(), prefix, &mut revisions, done));
                }
            }
        }
    }
}

impl KeyWrite {
    fn encoded_key(&self) -> String {
        match self {
            KeyWrite::Put { key, .. } | KeyWrite::Delete { key, .. } => keys::encode(key),
        }
    }
}

fn start(shared: &Arc<Shared>, write: KeyWrite, revisions: &HashMap<String, Known>) -> BoxFuture<'static, Written> {
    let shared = shared.clone();
    let encoded = write.encoded_key();
    let known = revisions.get(&encoded).cloned();
    async move {
        let subject = format!("{}{encoded}", shared.kv_subject);
        let (key, done, value) = match write {
            KeyWrite::Put { key, value, done } => (key, done, Some(Bytes::from(value))),
            KeyWrite::Delete { key, done } => (key, done, None),
        };
        let revision = match known {
            None => None,
            Some(Known::At(revision)) => Some(revision),
            Some(Known::Unsure { before, wrote }) => match settle(&shared, &key, &subject, before, wrote).await {
                Ok(revision) => revision,
                Err(error) => return (Some(encoded), Err(error), None, done),
            },
        };
        let started = Instant::now();
        let outcome = match &value {
            Some(value) => put(&shared, &key, subject, value.clone(), revision).await,
            None => delete(&shared, &key, subject, revision).await,
        };
        let after = match &outcome {
            Ok(known) => {
                shared.stats.record(started);
                Some(known.clone())
            }
            Err(StoreError::Unavailable(_)) => Some(Some(Known::Unsure { before: revision, wrote: value })),
            Err(_) => None,
        };
        (Some(encoded), outcome.map(|_| ()), after, done)
    }
    .boxed()
}

/// The revision of a key whose last write may or may not have been stored: the revision before
/// it, or the one it made; a conflict when the key holds anything else.
async fn settle(
    shared: &Shared,
    key: &str,
    subject: &str,
    before: Option<u64>,
    wrote: Option<Bytes>,
) -> Result<Option<u64>, StoreError> {
    match shared.state.get_last_raw_message_by_subject(subject).await {
        Ok(message) if Some(message.sequence) == before || wrote.as_ref() == Some(&message.payload) => {
            Ok(Some(message.sequence))
        }
        Ok(_) => Err(conflict(key)),
        Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => match (before, wrote) {
            (Some(_), Some(_)) => Err(conflict(key)),
            _ => Ok(None),
        },
        Err(error) => Err(unavailable(format!("reading {key} from NATS: {error}"))),
    }
}

fn conflict(key: &str) -> StoreError {
    StoreError::Conflict(format!("{key}: another replica wrote it since this one last read it"))
}

/// Writes `value` if the key is still at `revision` (absent when `None`).
async fn put(
    shared: &Shared,
    key: &str,
    subject: String,
    value: Bytes,
    revision: Option<u64>,
) -> Result<Option<Known>, StoreError> {
    let mut headers = HeaderMap::new();
    headers.insert(header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, revision.unwrap_or(0).to_string().as_str());
    let ack = async { shared.js.publish_with_headers(subject, headers, value).await?.await }.await;
    match ack {
        Ok(ack) => Ok(Some(Known::At(ack.sequence))),
        Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => Err(conflict(key)),
        Err(error) => Err(unavailable(format!("writing {key} to NATS: {error}"))),
    }
}

/// Removes the key if it is still at `revision` (whatever it holds when `None`). The key's
/// messages are purged from the bucket's stream rather than marked deleted, so that expired
/// keys leave nothing behind.
async fn delete(
    shared: &Shared,
    key: &str,
    subject: String,
    revision: Option<u64>,
) -> Result<Option<Known>, StoreError> {
    let purge = shared.state.purge().filter(subject);
    let purged = match revision {
        // Up to and including our revision: a newer one, written by another replica, stays.
        Some(revision) => purge.sequence(revision.saturating_add(1)).await,
        None => purge.await,
    }
    .map_err(|error| unavailable(format!("removing {key} from NATS: {error}")))?;
    match revision {
        Some(_) if purged.purged == 0 => Err(conflict(key)),
        _ => Ok(None),
    }
}

/// Removes every key starting with `prefix`, and forgets their revisions.
fn delete_prefix(
    shared: Arc<Shared>,
    prefix: String,
    revisions: &mut HashMap<String, Known>,
    done: Done,
) -> BoxFuture<'static, Written> {
    revisions.retain(|key, _| !keys::decode(key).is_some_and(|key| key.starts_with(&prefix)));
    async move {
        let started = Instant::now();
        let subject = format!("{}{}", shared.kv_subject, keys::filter(&prefix));
        let outcome = async {
            if prefix.ends_with('/') {
                shared.state.purge().filter(subject).await.map_err(|error| error.to_string())?;
            } else {
                for (subject, _, _) in read_latest(&shared.state, subject).await.map_err(|error| error.to_string())? {
                    let key = subject.strip_prefix(&shared.kv_subject).and_then(keys::decode);
                    if key.is_some_and(|key| key.starts_with(&prefix)) {
                        shared.state.purge().filter(subject).await.map_err(|error| error.to_string())?;
                    }
                }
            }
            shared.stats.record(started);
            Ok(())
        }
        .await
        .map_err(|error: String| unavailable(format!("removing {prefix}* from NATS: {error}")));
        (None, outcome, None, done)
    }
    .boxed()
}
