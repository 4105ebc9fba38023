//! Plugins: source and destination types served by other processes over gRPC
//! (`ktrigger.plugin.v1`, in the repository's `proto/`), started by ktrigger or reached at an address, added to
//! the registry beside the built-in types.

pub mod config;
pub mod connect;
pub mod destination;
pub mod error;
pub mod manager;
pub mod source;
pub mod types;

pub use config::PluginsFile;
pub use error::PluginError;
pub use manager::PluginManager;
pub use types::register;

/// The generated `ktrigger.plugin.v1` protocol: messages, client and server.
#[allow(missing_docs)]
pub mod proto {
    tonic::include_proto!("ktrigger.plugin.v1");
}
