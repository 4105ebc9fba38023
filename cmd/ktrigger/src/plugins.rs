//! `--plugins`: starting the plugins a file names and adding their types to the registry.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use ktrigger_core::{EventMappings, Registry};
use ktrigger_plugin::connect::Timeouts;
use ktrigger_plugin::{PluginManager, PluginsFile};

use crate::durations::parse_duration;

/// Options naming the plugins.
#[derive(Debug, Clone, Args)]
pub struct PluginArgs {
    /// YAML file naming the plugins to start or connect to, and built-in sources to disable.
    #[arg(long, value_name = "FILE", env = "KTRIGGER_PLUGINS")]
    plugins: Option<PathBuf>,
    /// How long a started plugin may take to print its handshake line.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    plugin_handshake_timeout: Duration,
    /// Time limit of each Describe, Validate and Health call to a plugin.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    plugin_call_timeout: Duration,
}

impl PluginArgs {
    /// Starts every enabled plugin of the file; reports each that fails (its types are then
    /// unknown, and triggers using them say why): in the log when `log`, else on stderr as the
    /// output of a command.
    pub async fn start(&self, log: bool) -> anyhow::Result<PluginManager> {
        let Some(path) = &self.plugins else {
            return Ok(PluginManager::empty());
        };
        let file = PluginsFile::load(path)?;
        let timeouts = Timeouts { handshake: self.plugin_handshake_timeout, call: self.plugin_call_timeout };
        let manager = PluginManager::start(&file, timeouts).await;
        for error in manager.failed() {
            if log {
                tracing::error!(%error, "{error}");
            } else {
                eprintln!("error: {error}");
            }
        }
        Ok(manager)
    }
}

/// Adds the plugins' types to `registry`, their events annotated by `mappings`, reporting types
/// left out.
pub fn add_plugins(registry: &mut Registry, plugins: &PluginManager, mappings: &Arc<EventMappings>) {
    for problem in ktrigger_plugin::register(registry, plugins, mappings) {
        tracing::warn!(%problem, "{problem}");
    }
}
