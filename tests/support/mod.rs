//! Helpers of the end-to-end tests: run the real `ktrigger` binary and real receivers.

#![allow(dead_code)]

pub mod cluster;
pub mod http_server;
pub mod nats;
pub mod python;

pub use python::{PythonServer, json_lines};

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo() -> PathBuf {
    python::repository_root()
}

/// A command running the built `ktrigger` binary, with a state directory of its own (so that
/// processes running at once never share a state file; a test continuing one sets
/// `KTRIGGER_STATE_DIR` or `--state-dir` itself).
pub fn ktrigger() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ktrigger"));
    command.env("KTRIGGER_STATE_DIR", fresh_state_dir());
    command
}

/// A new, empty directory for one process's state, under the build's temporary directory.
pub fn fresh_state_dir() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("state").join(format!("{}-{n}", std::process::id()));
    // A directory left by an earlier run whose process had the same id.
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Output collected from a child process while it runs.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<String>>);

impl Captured {
    fn follow(stream: impl Read + Send + 'static) -> Self {
        let captured = Captured::default();
        let sink = captured.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        captured
    }

    /// Everything so far.
    pub fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    /// Waits until `check` holds for the text, or panics after `timeout` showing the text.
    pub fn wait_until(&self, what: &str, timeout: Duration, check: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let text = self.text();
            if check(&text) {
                return text;
            }
            assert!(start.elapsed() < timeout, "timed out waiting for {what}; output so far:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for a line containing `needle`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        self.wait_until(&format!("{needle:?}"), timeout, |text| text.contains(needle))
    }
}

/// Every line of `text` parsed as JSON; fails the test on the first line that is not JSON.
pub fn json_log_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\n{text}")))
        .collect()
}

/// Whether a stderr line is the error that ends the process: printed by the binary itself (not
/// a library crate) at level ERROR, or as `error:` before logging starts.
fn is_fatal(line: &str) -> bool {
    line.starts_with("error:") || line.contains(" ERROR ktrigger:") || line.contains(" ERROR ktrigger::")
}

/// A running `ktrigger run`, stopped (SIGTERM) when dropped.
pub struct Running {
    child: Child,
    /// Its stdout (log destination lines, dry-run decisions).
    pub stdout: Captured,
    /// Its stderr (start-up report, logs).
    pub stderr: Captured,
}

impl Running {
    /// Starts `ktrigger run` with `args` (a free webhook port is added) and waits until it runs.
    pub fn start(args: &[&str]) -> Running {
        Self::start_with_env(args, &[])
    }

    /// Like [`Running::start`], with extra environment variables for the process.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Running {
        let mut command = ktrigger();
        command.arg("run").envs(env.iter().copied()).args(args).args(["--webhook-addr", "127.0.0.1:0"]);
        Self::spawn(command, &["ktrigger running"])
    }

    /// Starts `ktrigger controller` with `args` and waits until it reconciles, or waits to lead.
    /// Webhooks, health probes and metrics are served on ports the system picks (see
    /// [`url_after`](Self::url_after)).
    pub fn start_controller(args: &[&str]) -> Running {
        Self::start_controller_with_env(args, &[])
    }

    /// Like [`Running::start_controller`], with extra environment variables for the process.
    pub fn start_controller_with_env(args: &[&str], env: &[(String, String)]) -> Running {
        let mut command = ktrigger();
        command.arg("controller").envs(env.iter().map(|(k, v)| (k, v))).args(args);
        // Port 0: the controller prints the addresses it was given (no race for a free port).
        command.args(["--webhook-addr", "127.0.0.1:0", "--health-addr", "127.0.0.1:0"]);
        command.args(["--metrics-addr", "127.0.0.1:0"]);
        Self::spawn(command, &["ktrigger controller reconciling", "waiting to lead"])
    }

    /// Starts `command` (which runs the binary, e.g. through a shell that sets limits) and waits
    /// until its stderr shows one of `ready`.
    pub fn spawn_command(command: Command, ready: &[&str]) -> Running {
        Self::spawn(command, ready)
    }

    fn spawn(mut command: Command, ready: &[&str]) -> Running {
        if !command.get_envs().any(|(name, _)| name == "KTRIGGER_LOG") {
            command.env("KTRIGGER_LOG", "info");
        }
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("ktrigger starts");
        let stdout = Captured::follow(child.stdout.take().unwrap());
        let stderr = Captured::follow(child.stderr.take().unwrap());
        let running = Running { child, stdout, stderr };
        running.stderr.wait_until("start-up", Duration::from_secs(60), |t| {
            // A fatal error is printed as a line of its own starting with `error:`; problems of
            // single triggers (e.g. a CEL "Syntax error:") are not the end of start-up.
            ready.iter().any(|marker| t.contains(marker)) || t.lines().any(is_fatal)
        });
        running
    }

    /// The URL printed after `prefix` in the start-up report, e.g. `webhook listener on `.
    pub fn url_after(&self, prefix: &str) -> String {
        let text = self.stderr.wait_for(prefix, Duration::from_secs(30));
        let line = text.lines().find(|l| l.contains(prefix)).unwrap();
        let (_, rest) = line.split_once(prefix).unwrap();
        // Up to the end of the word: the line is text, or JSON with the message quoted.
        rest.split(|c: char| c.is_whitespace() || c == '"').next().unwrap_or_default().to_string()
    }

    /// The base URL of the webhook listener, from the start-up report.
    pub fn webhook_url(&self) -> String {
        self.url_after("webhook listener on ")
    }

    /// Kills the process at once (SIGKILL): nothing is drained or released.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit; returns the exit code.
    pub fn stop(mut self) -> Option<i32> {
        terminate(&self.child);
        let status = self.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        status.code()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn terminate(child: &Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

/// The CloudEvents receiver built on the official Python SDK; stopped when dropped.
pub struct CloudEventsReceiver {
    server: PythonServer,
    /// Its URL.
    pub url: String,
}

impl CloudEventsReceiver {
    /// Starts the receiver on a free port. Fails (does not skip) when the SDK is missing.
    pub fn start() -> CloudEventsReceiver {
        let server = PythonServer::start(
            "cloudevents_receiver.py",
            "import cloudevents",
            "`cloudevents` is",
            "events.jsonl",
            &[],
        );
        let url = format!("http://127.0.0.1:{}/", server.port);
        CloudEventsReceiver { server, url }
    }

    /// The events accepted so far.
    pub fn events(&self) -> Vec<serde_json::Value> {
        json_lines(&self.server.output)
    }

    /// Waits until `count` events were accepted.
    pub fn wait_for(&self, count: usize, timeout: Duration) -> Vec<serde_json::Value> {
        wait_for_lines(&self.server.output, count, timeout)
    }
}

/// Waits until `path` holds `count` JSON lines, and returns them.
pub fn wait_for_lines(path: &Path, count: usize, timeout: Duration) -> Vec<serde_json::Value> {
    let start = Instant::now();
    loop {
        let lines = json_lines(path);
        if lines.len() >= count {
            return lines;
        }
        assert!(start.elapsed() < timeout, "{} has {} of {count} lines: {lines:#?}", path.display(), lines.len());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The example TriggerService files directly under `examples/`, sorted. The plugin example needs
/// its plugin running and sits in `docs/plugins/` (tested by tests/plugins.rs);
/// `examples/events/` holds sample events for `ktrigger eval`.
pub fn example_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file() && path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// A placeholder value for every `env: NAME` the example files read credentials from.
pub fn example_env() -> Vec<(String, String)> {
    let mut names = Vec::new();
    for path in example_files() {
        let text = std::fs::read_to_string(path).unwrap();
        for part in text.split("env:").skip(1) {
            let name: String =
                part.trim_start().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                names.push((name, "https://placeholder.invalid/credential".to_string()));
            }
        }
    }
    names
}

/// Fetches `url` with curl; returns (status, body).
pub fn get(url: &str) -> (u16, String) {
    let output = Command::new("curl").args(["-s", "-o", "-", "-w", "\n%{http_code}", url]).output().expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Writes `text` to a file in a fresh temporary directory.
pub fn write_config(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("triggers.yaml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// Posts `body` to `url` with extra headers using curl; returns (status, body).
pub fn post(url: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut command = Command::new("curl");
    // The body goes through stdin: an argument is limited to 128 KiB.
    command.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", "POST", url, "--data-binary", "@-"]);
    for (name, value) in headers {
        command.args(["-H", &format!("{name}: {value}")]);
    }
    let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("curl runs");
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let output = child.wait_with_output().expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

/// The `sha256=<hex>` HMAC-SHA256 of `body` with `key`, as the webhook source checks it.
pub fn hmac_signature(key: &str, body: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether the server closed `stream` (read returns end of file or an error) within `within`.
pub fn closed_by_server(mut stream: &std::net::TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buffer = [0u8; 512];
    let start = Instant::now();
    while start.elapsed() < within {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
    false
}

/// The `lastError` of a trigger's status entry; empty when there is none.
pub fn last_error(status: &serde_json::Value) -> String {
    status["lastError"].as_str().unwrap_or_default().to_string()
}
