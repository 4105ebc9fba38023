//! The errors of this crate: what registering and running an event loop can fail on.

/// Why an [`EventLoop`](crate::EventLoop) could not register a handler or run.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Two handlers of one loop have the same name.
    #[error("event loop {event_loop}: a handler named {handler:?} is already registered")]
    DuplicateName {
        /// The loop.
        event_loop: String,
        /// The name.
        handler: String,
    },
    /// A handler's label selector does not parse.
    #[error("event loop {event_loop}, handler {handler}: label selector {selector:?}: {message}")]
    Selector {
        /// The loop.
        event_loop: String,
        /// The handler.
        handler: String,
        /// The selector as given.
        selector: String,
        /// What is wrong with it.
        message: String,
    },
    /// `run` was given a threadiness outside 1..=[`MAX_THREADINESS`](crate::MAX_THREADINESS).
    #[error("event loop {event_loop}: threadiness must be between 1 and {max}, not {threadiness}")]
    Threadiness {
        /// The loop.
        event_loop: String,
        /// What was asked.
        threadiness: usize,
        /// The largest allowed.
        max: usize,
    },
    /// The loop was made on a [`Cluster`](ktrigger_kube::Cluster) without a client.
    #[error("event loop {event_loop}: no Kubernetes cluster: {reason}")]
    NoCluster {
        /// The loop.
        event_loop: String,
        /// Why the cluster has no client.
        reason: String,
    },
    /// A handler's watch could not be opened, was refused (RBAC, unknown resource, bad
    /// selector), or kept failing before its first list completed.
    #[error("event loop {event_loop}, handler {handler}: watch of {resource}: {reason}")]
    Watch {
        /// The loop.
        event_loop: String,
        /// The handler.
        handler: String,
        /// What it watches.
        resource: String,
        /// What went wrong.
        reason: String,
    },
}

impl HandlerError {
    /// A short, stable label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            HandlerError::DuplicateName { .. } => "duplicate_name",
            HandlerError::Selector { .. } => "selector",
            HandlerError::Threadiness { .. } => "threadiness",
            HandlerError::NoCluster { .. } => "no_cluster",
            HandlerError::Watch { .. } => "watch",
        }
    }
}
