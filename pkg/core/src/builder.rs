//! [`EngineBuilder`]: how an embedder (or `ktrigger run`) puts an [`Engine`] together from its
//! source and destination types, a state store, a Secret reader and limits.

use std::sync::Arc;
use std::time::Duration;

use crate::credentials::CredentialPolicy;
use crate::delivery::QueueLimits;
use crate::engine::{Engine, EngineOptions};
use crate::registry::{DestinationFactory, Registry, SourceFactory};
use crate::router::DedupLimits;
use crate::secrets::SecretReader;
use crate::state::StateStore;
use crate::typed::{DestinationType, SourceType};

/// Collects what an [`Engine`] is made of; [`Engine::builder`] starts one.
///
/// Without a store the engine keeps everything in memory; without a Secret reader a trigger that
/// names a Secret is skipped with the reason.
#[derive(Default)]
pub struct EngineBuilder {
    registry: Arc<Registry>,
    options: EngineOptions,
    store: Option<Arc<dyn StateStore>>,
    secrets: Option<Arc<dyn SecretReader>>,
}

impl EngineBuilder {
    /// Starts from `registry` (e.g. one filled by `ktrigger_sources::register`, or shared by
    /// several engines) instead of an empty one; types added before are dropped, types added
    /// after join a copy of it.
    pub fn registry(self, registry: impl Into<Arc<Registry>>) -> Self {
        EngineBuilder { registry: registry.into(), ..self }
    }

    /// Adds a source type described by a typed properties struct (see [`SourceType`]).
    pub fn source_type<T: SourceType>(mut self, kind: T) -> Self {
        Arc::make_mut(&mut self.registry).add_source_type(kind);
        self
    }

    /// Adds a destination type described by a typed properties struct (see [`DestinationType`]).
    pub fn destination_type<T: DestinationType>(mut self, kind: T) -> Self {
        Arc::make_mut(&mut self.registry).add_destination_type(kind);
        self
    }

    /// Adds a source factory written against the untyped [`SourceFactory`] trait.
    pub fn source_factory(mut self, factory: Arc<dyn SourceFactory>) -> Self {
        Arc::make_mut(&mut self.registry).add_source(factory);
        self
    }

    /// Adds a destination factory written against the untyped [`DestinationFactory`] trait.
    pub fn destination_factory(mut self, factory: Arc<dyn DestinationFactory>) -> Self {
        Arc::make_mut(&mut self.registry).add_destination(factory);
        self
    }

    /// Replaces every option at once.
    pub fn options(self, options: EngineOptions) -> Self {
        EngineBuilder { options, ..self }
    }

    /// Evaluates everything but calls no destination; what would be sent is printed instead.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.options.dry_run = dry_run;
        self
    }

    /// Which of this process's files and variables `{file}` and `{env}` references may read.
    pub fn credentials(mut self, credentials: CredentialPolicy) -> Self {
        self.options.credentials = credentials;
        self
    }

    /// Bytes the delivery queues may hold, per trigger and in all.
    pub fn queue_limits(mut self, limits: QueueLimits) -> Self {
        self.options.queue_limits = limits;
        self
    }

    /// Dedup keys the router keeps, per trigger and in all.
    pub fn dedup_limits(mut self, limits: DedupLimits) -> Self {
        self.options.dedup_limits = limits;
        self
    }

    /// First and longest delay before a failed source is started again.
    pub fn source_backoff(mut self, first: Duration, longest: Duration) -> Self {
        self.options.source_backoff = (first, longest);
        self
    }

    /// Keeps deliveries, dedup windows and source positions in `store`, so that they survive
    /// restarts.
    pub fn store(self, store: Arc<dyn StateStore>) -> Self {
        EngineBuilder { store: Some(store), ..self }
    }

    /// Reads the Secrets that `secretKeyRef` properties name through `reader`.
    pub fn secret_reader(self, reader: Arc<dyn SecretReader>) -> Self {
        EngineBuilder { secrets: Some(reader), ..self }
    }

    /// The engine, running nothing until [`Engine::apply`] is called.
    pub fn build(self) -> Engine {
        let mut engine = Engine::new(self.registry, self.options);
        if let Some(store) = self.store {
            engine = engine.with_store(store);
        }
        if let Some(reader) = self.secrets {
            engine = engine.with_secret_reader(reader);
        }
        engine
    }
}
