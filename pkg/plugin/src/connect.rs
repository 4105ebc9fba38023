//! Starting a plugin program and reading its handshake, or connecting to a plugin's address.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::config::{Launch, PluginSpec};
use crate::error::PluginError;
use crate::proto::plugin_client::PluginClient;

/// The protocol version this ktrigger speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// First word of the handshake line.
pub const HANDSHAKE_MAGIC: &str = "KTRIGGER_PLUGIN";

/// Longest handshake line read; a program printing more is not a plugin.
const MAX_HANDSHAKE_BYTES: u64 = 512;

/// Longest line of a plugin's later stdout output copied to the log.
const MAX_LOG_LINE_BYTES: u64 = 4096;

/// Largest message accepted from a plugin (an event or a describe answer).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Time limits of starting and asking a plugin.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From start until the handshake line.
    pub handshake: Duration,
    /// Of connecting and of each Describe, Validate and Health call.
    pub call: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { handshake: Duration::from_secs(10), call: Duration::from_secs(5) }
    }
}

/// A reachable plugin: its client and, for a started program, the process.
pub struct Connection {
    /// The gRPC client.
    pub client: PluginClient<Channel>,
    /// The plugin's process when ktrigger started it.
    pub child: Option<Child>,
}

/// Starts or connects to `spec`'s plugin.
pub async fn connect(spec: &PluginSpec, timeouts: Timeouts) -> Result<Connection, PluginError> {
    match spec.launch()? {
        Launch::Command(command) => start(spec, &command, timeouts).await,
        Launch::Address(address) => {
            let channel = endpoint(spec, &address, timeouts)?.connect_lazy();
            Ok(Connection { client: client(channel), child: None })
        }
    }
}

fn client(channel: Channel) -> PluginClient<Channel> {
    PluginClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES)
}

async fn start(spec: &PluginSpec, command: &[String], timeouts: Timeouts) -> Result<Connection, PluginError> {
    let unavailable = |reason: String| PluginError::Unavailable { plugin: spec.name.clone(), reason };
    let (program, args) = command.split_first().ok_or_else(|| unavailable("empty command".into()))?;
    let mut child = Command::new(program)
        .args(args)
        .envs(&spec.env)
        .env("KTRIGGER_PLUGIN_PROTOCOL_VERSION", PROTOCOL_VERSION.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| unavailable(format!("cannot start {program:?}: {e}")))?;
    let Some(stdout) = child.stdout.take() else {
        return Err(unavailable("no stdout".into()));
    };
    let mut stdout = BufReader::new(stdout);
    let handshake = async {
        let mut line = Vec::new();
        (&mut stdout).take(MAX_HANDSHAKE_BYTES).read_until(b'\n', &mut line).await.map(|_| line)
    };
    let line = match tokio::time::timeout(timeouts.handshake, handshake).await {
        Err(_) => {
            return Err(PluginError::Handshake {
                plugin: spec.name.clone(),
                reason: format!("no handshake line on stdout within {:?}", timeouts.handshake),
            });
        }
        Ok(Err(e)) => return Err(unavailable(format!("cannot read its stdout: {e}"))),
        Ok(Ok(line)) => line,
    };
    let addr = parse_handshake(&spec.name, &line)?;
    tokio::spawn(copy_to_log(spec.name.clone(), stdout));
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| unavailable(e.to_string()))?
        .connect_timeout(timeouts.call);
    let channel = endpoint.connect().await.map_err(|e| unavailable(format!("cannot connect to {addr}: {e}")))?;
    Ok(Connection { client: client(channel), child: Some(child) })
}

/// Reads `KTRIGGER_PLUGIN|<version>|<host:port>`.
fn parse_handshake(plugin: &str, line: &[u8]) -> Result<SocketAddr, PluginError> {
    let bad = |reason: String| PluginError::Handshake { plugin: plugin.to_string(), reason };
    let expected = format!("expected {HANDSHAKE_MAGIC}|{PROTOCOL_VERSION}|<host:port> as the first line of stdout");
    if line.is_empty() {
        return Err(bad(format!("{expected}; the program exited or closed stdout")));
    }
    let Some(text) = std::str::from_utf8(line).ok().and_then(|t| t.strip_suffix('\n')) else {
        let shown = String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned();
        return Err(bad(format!("{expected}, got {shown:?}")));
    };
    let text = text.trim_end_matches('\r');
    let shown = || text.chars().take(80).collect::<String>();
    let parts: Vec<&str> = text.split('|').collect();
    let [magic, version, addr] = parts[..] else {
        return Err(bad(format!("{expected}, got {:?}", shown())));
    };
    if magic != HANDSHAKE_MAGIC {
        return Err(bad(format!("{expected}, got {:?}", shown())));
    }
    if version != PROTOCOL_VERSION.to_string() {
        return Err(PluginError::Version {
            plugin: plugin.to_string(),
            version: version.chars().take(20).collect(),
            supported: PROTOCOL_VERSION,
        });
    }
    addr.parse().map_err(|_| bad(format!("{addr:?} is not a host:port address")))
}

/// Copies what a plugin prints after its handshake to the log, so that it never blocks on a full
/// pipe.
async fn copy_to_log(plugin: String, mut stdout: impl AsyncRead + Unpin) {
    let mut reader = BufReader::new(&mut stdout);
    loop {
        let mut line = Vec::new();
        match (&mut reader).take(MAX_LOG_LINE_BYTES).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                tracing::info!(plugin = %plugin, output = %String::from_utf8_lossy(&line).trim_end(), "plugin stdout")
            }
        }
    }
}

fn endpoint(spec: &PluginSpec, address: &str, timeouts: Timeouts) -> Result<Endpoint, PluginError> {
    let invalid = |reason: String| PluginError::Config(format!("plugin {:?}: address: {reason}", spec.name));
    let mut endpoint =
        Endpoint::from_shared(address.to_string()).map_err(|e| invalid(e.to_string()))?.connect_timeout(timeouts.call);
    if address.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        let settings = spec.tls.clone().unwrap_or(crate::config::TlsSpec { ca_file: None, server_name: None });
        match &settings.ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| invalid(format!("tls.caFile {}: {e}", path.display())))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            None => tls = tls.with_native_roots(),
        }
        if let Some(name) = &settings.server_name {
            tls = tls.domain_name(name.clone());
        }
        endpoint = endpoint.tls_config(tls).map_err(|e| invalid(e.to_string()))?;
    }
    Ok(endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handshake_line_gives_the_address() {
        let addr = parse_handshake("p", b"KTRIGGER_PLUGIN|1|127.0.0.1:4000\n").unwrap();
        assert_eq!(addr, "127.0.0.1:4000".parse().unwrap());
    }

    #[test]
    fn another_protocol_version_is_named_in_the_error() {
        let error = parse_handshake("p", b"KTRIGGER_PLUGIN|2|127.0.0.1:4000\n").unwrap_err().to_string();
        assert_eq!(error, "plugin \"p\" speaks protocol version 2; this ktrigger speaks version 1");
    }

    #[test]
    fn a_line_that_is_not_a_handshake_is_quoted() {
        let error = parse_handshake("p", b"hello world\n").unwrap_err().to_string();
        assert!(error.starts_with("plugin \"p\": bad handshake: expected KTRIGGER_PLUGIN|1|<host:port>"), "{error}");
        assert!(error.ends_with("got \"hello world\""), "{error}");
    }

    #[test]
    fn a_program_that_prints_nothing_is_a_bad_handshake() {
        let error = parse_handshake("p", b"").unwrap_err().to_string();
        assert!(error.contains("exited or closed stdout"), "{error}");
    }

    #[test]
    fn a_handshake_cut_at_the_size_limit_is_refused() {
        let long = vec![b'x'; MAX_HANDSHAKE_BYTES as usize];
        assert!(matches!(parse_handshake("p", &long), Err(PluginError::Handshake { .. })));
    }
}
