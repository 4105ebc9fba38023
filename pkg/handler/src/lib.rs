//! Event handlers for Kubernetes controllers written in Rust, on ktrigger's shared watches.
//!
//! A controller implements [`EventHandler`] for the objects it cares about, registers it with an
//! [`EventLoop`] for a [`Watch`] (a resource type, optionally a namespace and a label selector),
//! and runs the loop with a number of workers until a cancellation token fires.
//!
//! # A handler
//!
//! Every callback has a default that does nothing: implement only what you need. Callbacks get
//! a [`Context`] (the client, a cancellation token), the object's namespace (`None` for
//! cluster-scoped objects), its name and the object itself, decoded as the handler's type.
//!
//! ```
//! use async_trait::async_trait;
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use ktrigger_handler::{Context, Error, EventHandler};
//!
//! /// Logs the ConfigMaps that appear.
//! struct Announce;
//!
//! #[async_trait]
//! impl EventHandler<ConfigMap> for Announce {
//!     fn name(&self) -> &str {
//!         "announce"
//!     }
//!
//!     async fn add(&self, _ctx: &Context, namespace: Option<&str>, name: &str, _: &ConfigMap) -> Result<(), Error> {
//!         println!("{}/{name} appeared", namespace.unwrap_or_default());
//!         Ok(())
//!     }
//! }
//! ```
//!
//! # Running it
//!
//! ```no_run
//! # use async_trait::async_trait;
//! # use k8s_openapi::api::core::v1::ConfigMap;
//! # use ktrigger_handler::{Context, Error, EventHandler};
//! # struct Announce;
//! # #[async_trait]
//! # impl EventHandler<ConfigMap> for Announce {
//! #     fn name(&self) -> &str { "announce" }
//! # }
//! use ktrigger_handler::{EventLoop, Metrics, Watch};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! ktrigger_kube::ensure_crypto_provider();
//! let client = kube::Client::try_default().await?;
//! let metrics = Metrics::new();
//! metrics.register(&mut prometheus_client::registry::Registry::default());
//!
//! let mut event_loop = EventLoop::new("config-watcher", client).metrics(&metrics);
//! event_loop.register(Announce, Watch::<ConfigMap>::new().namespace("apps"))?;
//!
//! let cancel = CancellationToken::new();
//! tokio::spawn({
//!     let cancel = cancel.clone();
//!     async move {
//!         let _ = tokio::signal::ctrl_c().await;
//!         cancel.cancel();
//!     }
//! });
//! event_loop.run(cancel, 4).await?; // 4 workers, until Ctrl-C
//! # Ok(())
//! # }
//! ```
//!
//! # What the loop guarantees
//!
//! - **One worker per object.** Changes are queued by (handler, namespace, name); an object is
//!   handled by at most one worker at a time, whatever the threadiness.
//! - **Coalescing.** Changes made while an object waits become one: the latest state wins, an
//!   add followed by updates stays an add, and an update keeps the oldest previous state.
//! - **Retries.** A callback that returns an error (or panics) is retried after a per-object
//!   exponential backoff ([`EventLoop::retry_backoff`]); once the retries are used up the change
//!   is dropped with an error log. A newer change of the object is handled at once.
//! - **Sync before start.** The objects that exist when the loop starts come first, as adds;
//!   workers start only once every handler's watch has listed them.
//! - **Bounded.** The queue holds at most [`EventLoop::max_queued_keys`] objects; past that,
//!   changes of other objects are dropped (logged, counted) until it drains.
//! - **Graceful shutdown.** When the token fires, no new object is taken, and callbacks in
//!   progress may finish within [`EventLoop::shutdown_grace`]; then [`Context::cancellation`]
//!   fires, and callbacks still running a second later are aborted.
//!
//! # Sharing watches
//!
//! [`EventLoop::new`] gives the loop watches of its own. [`EventLoop::on_cluster`] uses a
//! [`ktrigger_kube::Cluster`]'s WatchHub, which ktrigger's triggers use too: handlers and
//! triggers watching the same objects then share one Kubernetes watch. The watch keeps the
//! previous state of every object for the handlers' `update` callbacks.
//!
//! When a loop joins a watch that was already running, the existing objects are listed for it
//! right after it joins; they may reach its workers shortly after the first live changes.
//!
//! # Metrics
//!
//! [`Metrics`] holds, per loop name, the queue depth, adds, retries, drops and processing time;
//! register them in the program's `prometheus-client` registry.
//!
//! A complete controller that annotates the Deployments it has seen is in
//! `examples/sample-controller` of the repository.

#![deny(missing_docs)]

mod change;
mod dispatch;
mod error;
mod event_loop;
#[cfg(test)]
mod event_loop_tests;
mod handler;
mod metrics;
mod queue;
mod watch;

pub use error::HandlerError;
pub use event_loop::{EventLoop, MAX_THREADINESS};
pub use handler::{Context, DefaultHandler, Error, EventHandler};
pub use metrics::Metrics;
pub use watch::Watch;
