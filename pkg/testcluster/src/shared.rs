//! The state of one test cluster, shared by the request handlers, the watches and the
//! `TestCluster` handle.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use ktrigger_core::sync::lock;
use tokio_util::sync::CancellationToken;

use crate::faults::Faults;
use crate::store::Store;
use crate::{Config, RequestRecord};

/// State shared by the request handlers and the `TestCluster` handle.
pub(crate) struct Shared {
    store: Mutex<Store>,
    pub faults: Faults,
    pub config: Config,
    requests: Mutex<Vec<RequestRecord>>,
    watch_counts: Mutex<HashMap<String, u64>>,
    open_watches: Mutex<HashMap<String, usize>>,
    pub shutdown: CancellationToken,
    pub address: String,
}

impl Shared {
    /// Fresh state for a cluster listening on `address`.
    pub fn new(config: Config, address: String) -> Self {
        Shared {
            store: Mutex::new(Store::new(config.event_log_capacity)),
            faults: Faults::default(),
            config,
            requests: Mutex::default(),
            watch_counts: Mutex::default(),
            open_watches: Mutex::default(),
            shutdown: CancellationToken::new(),
            address,
        }
    }

    /// The object store.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    /// Records a request as it arrives.
    pub fn record(&self, request: RequestRecord) {
        lock(&self.requests).push(request);
    }

    /// Every request served so far.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.requests).clone()
    }

    /// Watch requests per resource plural.
    pub fn watch_counts(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        lock(&self.watch_counts)
    }

    /// Open watch streams per resource plural.
    pub fn open_watches(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        lock(&self.open_watches)
    }
}
