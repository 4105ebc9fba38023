//! The real third-party servers tests deliver to: Python programs under `tests/receivers/` that
//! print their port on their first line and record what they receive. A missing Python package
//! fails the test with the install command; it never skips it.
//!
//! Shared by the end-to-end tests (`tests/support`) and the destination tests of
//! `pkg/destinations`, which include this file by path.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// The repository root.
pub fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// A running receiver; killed when dropped.
pub struct PythonServer {
    child: Child,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    /// The file or directory it records to.
    pub output: PathBuf,
    _dir: tempfile::TempDir,
}

impl PythonServer {
    /// Runs `tests/receivers/<script> <output> <args…>`, where `output` is `output_name` in a fresh
    /// directory, after checking that python3 can run `imports` (naming `packages` if not).
    pub fn start(script: &str, imports: &str, packages: &str, output_name: &str, args: &[&str]) -> PythonServer {
        let root = repository_root();
        let check = Command::new("python3")
            .args(["-c", imports])
            .output()
            .unwrap_or_else(|e| panic!("python3 must be on PATH to run {script}: {e}"));
        assert!(
            check.status.success(),
            "the Python package(s) {packages} missing: run `pip install -r tests/requirements.txt` (from {}): {}",
            root.display(),
            String::from_utf8_lossy(&check.stderr)
        );
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join(output_name);
        let mut child = Command::new("python3")
            .arg(root.join("tests/receivers").join(script))
            .arg(&output)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {script}: {e}"));
        let mut first_line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut first_line).unwrap();
        let Ok(port) = first_line.trim().parse() else {
            let _ = child.kill();
            let mut stderr = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
            panic!("{script} did not print its port (got {first_line:?}): {stderr}");
        };
        PythonServer { child, port, output, _dir: dir }
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The complete JSON lines of `path`; none while the file does not exist yet. A last line without
/// its newline is one the receiver is still writing, and is left for the next read.
pub fn json_lines(path: &Path) -> Vec<Value> {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes)
            .split_inclusive('\n')
            .filter_map(|line| line.strip_suffix('\n'))
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{}: {e}: {line}", path.display())))
            .collect(),
        Err(_) => Vec::new(),
    }
}
