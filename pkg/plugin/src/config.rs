//! The plugins file given with `--plugins`: which plugins to start or connect to, and which
//! built-in sources to turn off.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::PluginError;

/// Largest plugins file read, in bytes.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// The whole plugins file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginsFile {
    /// The plugins, each started or connected to at start-up.
    #[serde(default)]
    pub plugins: Vec<PluginSpec>,
    /// Built-in source types to leave out of the registry (e.g. `k8s-events`).
    #[serde(default)]
    pub disabled_sources: Vec<String>,
}

/// One plugin.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginSpec {
    /// Name used in logs, errors and status.
    pub name: String,
    /// Program and arguments of a plugin ktrigger starts itself.
    #[serde(default)]
    pub command: Vec<String>,
    /// Environment variables added for the started program.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `http://host:port` or `https://host:port` of a plugin that is already running.
    #[serde(default)]
    pub address: Option<String>,
    /// TLS settings for an `https://` address.
    #[serde(default)]
    pub tls: Option<TlsSpec>,
    /// Whether to use the plugin at all (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
}

/// TLS settings for reaching a plugin at an address.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsSpec {
    /// PEM file of the CA that signed the plugin's certificate; the system roots when absent.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Name expected in the plugin's certificate; the address's host when absent.
    #[serde(default)]
    pub server_name: Option<String>,
}

fn yes() -> bool {
    true
}

/// How a plugin is reached.
#[derive(Debug, Clone, PartialEq)]
pub enum Launch {
    /// Start this program and read its handshake.
    Command(Vec<String>),
    /// Connect to this address.
    Address(String),
}

impl PluginSpec {
    /// Whether the plugin is started or connected to; an error says what is wrong with the entry.
    pub fn launch(&self) -> Result<Launch, PluginError> {
        let invalid = |reason: &str| PluginError::Config(format!("plugin {:?}: {reason}", self.name));
        match (&self.command[..], &self.address) {
            ([], None) => Err(invalid("set either command or address")),
            ([_, ..], Some(_)) => Err(invalid("set command or address, not both")),
            ([], Some(address)) if address.starts_with("http://") || address.starts_with("https://") => {
                Ok(Launch::Address(address.clone()))
            }
            ([], Some(_)) => Err(invalid("address must start with http:// or https://")),
            (command, None) => Ok(Launch::Command(command.to_vec())),
        }
    }
}

impl PluginsFile {
    /// Reads and checks a plugins file.
    pub fn load(path: &Path) -> Result<PluginsFile, PluginError> {
        let cannot = |e: &dyn std::fmt::Display| PluginError::Config(format!("{}: {e}", path.display()));
        let metadata = std::fs::metadata(path).map_err(|e| cannot(&e))?;
        if metadata.len() > MAX_FILE_BYTES {
            return Err(cannot(&format!("larger than {MAX_FILE_BYTES} bytes")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| cannot(&e))?;
        Self::parse(&text).map_err(|e| cannot(&e))
    }

    /// Parses the YAML text of a plugins file and checks every entry.
    pub fn parse(text: &str) -> Result<PluginsFile, PluginError> {
        let file: PluginsFile = serde_yaml::from_str(text).map_err(|e| PluginError::Config(e.to_string()))?;
        let mut names = std::collections::BTreeSet::new();
        for plugin in &file.plugins {
            if plugin.name.is_empty() {
                return Err(PluginError::Config("a plugin has an empty name".into()));
            }
            if !names.insert(plugin.name.as_str()) {
                return Err(PluginError::Config(format!("plugin {:?} is named twice", plugin.name)));
            }
            plugin.launch()?;
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_with_both_command_and_address_is_refused() {
        let text = "plugins:\n- name: p\n  command: [x]\n  address: http://localhost:1\n";
        let error = PluginsFile::parse(text).unwrap_err().to_string();
        assert!(error.contains("plugin \"p\": set command or address, not both"), "{error}");
    }

    #[test]
    fn plugins_are_enabled_unless_told_otherwise() {
        let text = "plugins:\n- name: a\n  command: [x]\n- name: b\n  address: https://b:1\n  enabled: false\n";
        let file = PluginsFile::parse(text).unwrap();
        assert!(file.plugins[0].enabled);
        assert!(!file.plugins[1].enabled);
        assert_eq!(file.plugins[1].launch().unwrap(), Launch::Address("https://b:1".into()));
    }

    #[test]
    fn two_plugins_of_one_name_are_refused() {
        let text = "plugins:\n- name: a\n  command: [x]\n- name: a\n  command: [y]\n";
        assert!(PluginsFile::parse(text).unwrap_err().to_string().contains("named twice"));
    }
}
