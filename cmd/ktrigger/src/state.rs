//! `--state-dir`: where deliveries, dedup windows and source positions are kept across restarts.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use ktrigger_core::{MemoryStore, MovedAside, RedbStore, StateStore};

/// Value of `--state-dir` that keeps nothing.
const NONE: &str = "none";

/// Options of the state store.
#[derive(Debug, Args)]
pub struct StateArgs {
    /// Directory of the state file (`state.redb`): queued deliveries, dedup windows, debounced
    /// events and source positions survive restarts and crashes. `none` keeps everything in
    /// memory, lost on restart. `run` defaults to $XDG_STATE_HOME/ktrigger, else
    /// ~/.local/state/ktrigger; the controller to `none`. `--dry-run` never writes state.
    #[arg(long, env = "KTRIGGER_STATE_DIR", value_name = "DIR|none")]
    state_dir: Option<String>,
}

/// The store a command runs with.
pub struct OpenedState {
    /// The store.
    pub store: Arc<dyn StateStore>,
    /// A state file that could not be used and was moved aside.
    pub moved_aside: Option<MovedAside>,
}

impl StateArgs {
    /// Opens the store `--state-dir` names, else the one under `default` (none: memory).
    /// Nothing is opened for a dry run.
    pub fn open(&self, default: Option<PathBuf>, dry_run: bool) -> anyhow::Result<OpenedState> {
        let memory = || OpenedState { store: Arc::new(MemoryStore), moved_aside: None };
        if dry_run {
            return Ok(memory());
        }
        let dir = match self.state_dir.as_deref() {
            Some(NONE) => None,
            Some(dir) => Some(PathBuf::from(dir)),
            None => default,
        };
        let Some(dir) = dir else { return Ok(memory()) };
        let (store, moved_aside) = RedbStore::open(&dir).map_err(|error| {
            anyhow::anyhow!("{error} (another --state-dir, or --state-dir none, lets a second ktrigger run beside it)")
        })?;
        Ok(OpenedState { store: Arc::new(store), moved_aside })
    }
}

/// Where `run` keeps its state by default: $XDG_STATE_HOME/ktrigger, else
/// ~/.local/state/ktrigger; none when neither variable is set.
pub fn default_local_dir() -> Option<PathBuf> {
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(state).join("ktrigger"));
    }
    let home = std::env::var_os("HOME").filter(|v| !v.is_empty())?;
    Some(PathBuf::from(home).join(".local/state/ktrigger"))
}
