//! The ktrigger engine core: the event context, CEL filters, templates, the shared router,
//! delivery queues with retries, and the supervisor that runs one isolated task per trigger.
//!
//! It knows nothing of Kubernetes: sources and destinations plug in through [`registry`].

pub mod bounded;
pub mod cel;
pub mod config;
pub mod credentials;
pub mod delivery;
pub mod egress;
pub mod engine;
pub mod event;
pub mod mappings;
pub mod prepare;
pub mod properties;
pub mod registry;
pub mod router;
pub mod secrets;
pub mod state;
pub mod stats;
pub mod sync;
pub mod template;
pub mod tls;
pub mod trace;
pub mod typed;
