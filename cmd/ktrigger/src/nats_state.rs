//! `--state nats://…`: the NATS JetStream state store, so that the replica taking the lease
//! continues the queues and dedup windows of the one that stopped.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use ktrigger_core::{NatsAuth, NatsOptions, NatsStore, NatsTls, StateStore};

use crate::durations::parse_duration;

/// Where replicas keep their state.
#[derive(Debug, Args)]
pub struct NatsStateArgs {
    /// NATS server (`nats://HOST:PORT`, or `tls://HOST:PORT`) with JetStream enabled, where
    /// deliveries, dedup windows and source positions are kept for every replica; when set,
    /// --state-dir is not used.
    #[arg(long = "state", value_name = "URL", env = "KTRIGGER_STATE")]
    url: Option<String>,
    /// Prefix of the names created in NATS: stream `<prefix>-queues`, KV bucket `<prefix>-state`.
    #[arg(long, value_name = "NAME", default_value = ktrigger_core::NATS_DEFAULT_PREFIX)]
    state_prefix: String,
    /// NATS credentials file (`.creds`: user JWT and NKey seed).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["state_token_file", "state_user"])]
    state_creds: Option<PathBuf>,
    /// File holding a NATS token.
    #[arg(long, value_name = "FILE", conflicts_with = "state_user")]
    state_token_file: Option<PathBuf>,
    /// NATS user name; the password is read from --state-password-file.
    #[arg(long, value_name = "USER", requires = "state_password_file")]
    state_user: Option<String>,
    /// File holding the password of --state-user.
    #[arg(long, value_name = "FILE", requires = "state_user")]
    state_password_file: Option<PathBuf>,
    /// CA certificates (PEM) the NATS server's certificate must chain to; turns TLS on.
    #[arg(long, value_name = "FILE")]
    state_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for NATS servers that verify clients; turns TLS on.
    #[arg(long, value_name = "FILE", requires = "state_tls_key")]
    state_tls_cert: Option<PathBuf>,
    /// Key (PEM) of --state-tls-cert.
    #[arg(long, value_name = "FILE", requires = "state_tls_cert")]
    state_tls_key: Option<PathBuf>,
    /// How long a delivery taken by a replica may go without news from it before JetStream
    /// hands it to another (a live replica renews it well before).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    state_ack_wait: Duration,
}

impl NatsStateArgs {
    /// The store, connected; `None` without `--state`.
    pub async fn connect(&self) -> anyhow::Result<Option<Arc<dyn StateStore>>> {
        let Some(url) = &self.url else { return Ok(None) };
        let auth = match (&self.state_creds, &self.state_token_file, &self.state_user, &self.state_password_file) {
            (Some(creds), _, _, _) => NatsAuth::CredsFile(creds.clone()),
            (_, Some(token), _, _) => NatsAuth::TokenFile(token.clone()),
            (_, _, Some(user), Some(password)) => {
                NatsAuth::UserPassword { user: user.clone(), password_file: password.clone() }
            }
            _ => NatsAuth::None,
        };
        let tls = NatsTls {
            ca: self.state_tls_ca.clone(),
            cert: self.state_tls_cert.clone(),
            key: self.state_tls_key.clone(),
        };
        let options = NatsOptions {
            prefix: self.state_prefix.clone(),
            auth,
            tls,
            ack_wait: self.state_ack_wait,
            ..NatsOptions::new(url.clone())
        };
        let store = NatsStore::connect(options).await?;
        Ok(Some(Arc::new(store)))
    }
}
