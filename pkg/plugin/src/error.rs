//! The one error type of the plugin crate.

/// What went wrong with a plugin.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PluginError {
    /// The plugins file or one of its entries is wrong.
    #[error("{0}")]
    Config(String),
    /// The started program did not print a valid handshake line in time.
    #[error("plugin {plugin:?}: bad handshake: {reason}")]
    Handshake {
        /// The plugin's name.
        plugin: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The plugin speaks a protocol version this ktrigger does not.
    #[error("plugin {plugin:?} speaks protocol version {version}; this ktrigger speaks version {supported}")]
    Version {
        /// The plugin's name.
        plugin: String,
        /// The version it announced.
        version: String,
        /// The version ktrigger speaks.
        supported: u32,
    },
    /// The plugin could not be started, reached or asked.
    #[error("plugin {plugin:?}: {reason}")]
    Unavailable {
        /// The plugin's name.
        plugin: String,
        /// Why.
        reason: String,
    },
}
