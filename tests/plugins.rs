//! Plugins end to end: the real binary with the example Python plugin (grpcio), started as a
//! child process or reached at an address, in `run`, `validate`, `sources` and `controller`.

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::cluster::{Env, WAIT};
use support::{Running, ktrigger, post, repo, wait_for_lines, write_config};

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// The example plugin's program, after checking that python3 has grpcio and grpcio-tools.
fn plugin_script() -> PathBuf {
    let check = Command::new("python3").args(["-c", "import grpc, grpc_tools"]).output().expect("python3 runs");
    assert!(
        check.status.success(),
        "the example plugin needs grpcio and grpcio-tools: pip install -r tests/requirements.txt\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    repo().join("examples/plugins/python/plugin.py")
}

/// A plugins file in `dir` starting the example plugin, which keeps its state and output in `dir`.
fn plugins_file(dir: &Path) -> PathBuf {
    let text = format!(
        "plugins:\n- name: example\n  command: [python3, {script}]\n  env:\n    EXAMPLE_PLUGIN_STATE_DIR: {dir}\n    EXAMPLE_PLUGIN_OUTPUT_DIR: {dir}\n",
        script = plugin_script().display(),
        dir = dir.display()
    );
    let path = dir.join("plugins.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A plugins file in `dir` with one plugin started as `command`.
fn plugins_file_with(dir: &Path, name: &str, command: &str) -> PathBuf {
    let path = dir.join("plugins.yaml");
    std::fs::write(&path, format!("plugins:\n- name: {name}\n  command: {command}\n")).unwrap();
    path
}

fn counter_service(properties: &str, destination: &str) -> String {
    format!(
        r#"
apiVersion: ktrigger.dev/v1alpha1
kind: TriggerService
metadata: {{name: plugged}}
spec:
  triggers:
  - name: numbers
    source: {{type: counter, properties: {properties}}}
    destinations: [{destination}]
"#
    )
}

/// The numbers of the counter events printed by a `log` destination.
fn logged_numbers(stdout: &str) -> Vec<u64> {
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["event"]["source"] == "counter")
        .filter_map(|line| line["object"]["n"].as_u64())
        .collect()
}

fn validate(args: &[&str]) -> (bool, String) {
    let output = ktrigger().arg("validate").args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[test]
fn plugin_source_events_reach_a_builtin_destination() {
    let (dir, config) = write_config(&counter_service("{intervalMs: 20, count: 5}", "{type: log}"));
    let plugins = plugins_file(dir.path());
    let running = Running::start(&["--plugins", plugins.to_str().unwrap(), "-f", config.to_str().unwrap()]);
    let stdout = running.stdout.wait_until("five counter events", WAIT, |t| logged_numbers(t).len() >= 5);
    assert_eq!(logged_numbers(&stdout), vec![1, 2, 3, 4, 5]);
    let first: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(first["event"]["id"], "counter-1", "the plugin's own id is the event id");
    assert_eq!(first["event"]["type"], "tick");
    assert_eq!(running.stop(), Some(0));
}

#[test]
fn builtin_source_reaches_plugin_destinations_with_retries_and_dead_letter() {
    let config = r#"
apiVersion: ktrigger.dev/v1alpha1
kind: TriggerService
metadata: {name: outbound}
spec:
  triggers:
  - name: hooks
    source: {type: webhook, properties: {path: /in}}
    destinations:
    - type: jsonl
      properties: {name: flaky, failFirst: 2}
      retry: {maxAttempts: 3, backoff: 50ms, maxBackoff: 100ms}
    - type: jsonl
      properties: {name: never, reject: true}
      retry: {maxAttempts: 3, backoff: 50ms}
    deadLetter: {type: log}
"#;
    let (dir, path) = write_config(config);
    let plugins = plugins_file(dir.path());
    let running = Running::start(&["--plugins", plugins.to_str().unwrap(), "-f", path.to_str().unwrap()]);
    let url = format!("{}/in", running.webhook_url());
    assert_eq!(post(&url, &[JSON], r#"{"build": 7}"#).0, 202);

    let delivered = wait_for_lines(&dir.path().join("flaky.jsonl"), 1, WAIT);
    assert_eq!(delivered[0]["attempt"], 3, "two transient failures, then delivered");
    assert_eq!(delivered[0]["context"]["object"], serde_json::json!({"build": 7}));
    let stdout = running.stdout.wait_for("\"dead-letter\"", WAIT);
    let letter: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(letter["object"]["destination"], "jsonl#1");
    assert_eq!(letter["object"]["attempts"], 1, "a permanent failure is not retried");
    let reason = letter["object"]["reason"].as_str().unwrap();
    assert_eq!(reason, "plugin \"example\": this destination rejects everything");
    assert!(!dir.path().join("never.jsonl").exists());
    assert_eq!(running.stop(), Some(0));
}

/// The process ids of the direct children of `parent`.
fn children(parent: u32) -> Vec<u32> {
    let output = Command::new("pgrep").args(["-P", &parent.to_string()]).output().expect("pgrep runs");
    String::from_utf8_lossy(&output.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect()
}

#[test]
fn a_killed_plugin_is_restarted_and_no_acknowledged_event_is_lost() {
    let (dir, config) = write_config(&counter_service("{intervalMs: 10, count: 150}", "{type: log}"));
    let plugins = plugins_file(dir.path());
    let running = Running::start(&["--plugins", plugins.to_str().unwrap(), "-f", config.to_str().unwrap()]);
    running.stdout.wait_until("some events before the kill", WAIT, |t| logged_numbers(t).len() >= 20);
    let plugin = children(running.id());
    assert_eq!(plugin.len(), 1, "one plugin process");
    let killed = Command::new("kill").args(["-KILL", &plugin[0].to_string()]).status().unwrap();
    assert!(killed.success());
    let before = logged_numbers(&running.stdout.text()).len();
    assert!(before < 150, "the plugin was killed mid-stream ({before} events so far)");

    running.stderr.wait_for("plugin restarted", WAIT);
    let stdout = running.stdout.wait_until("every number", WAIT, |t| logged_numbers(t).contains(&150));
    let numbers: BTreeSet<u64> = logged_numbers(&stdout).into_iter().collect();
    let expected: BTreeSet<u64> = (1..=150).collect();
    assert_eq!(numbers, expected, "every number arrives: what was acknowledged, and what was sent again");
    assert_ne!(children(running.id()), plugin, "a new plugin process");
    assert_eq!(running.stop(), Some(0));
}

#[test]
fn a_plugin_destination_that_hangs_hits_the_delivery_timeout() {
    let config = r#"
apiVersion: ktrigger.dev/v1alpha1
kind: TriggerService
metadata: {name: slow}
spec:
  triggers:
  - name: hooks
    source: {type: webhook, properties: {path: /in}}
    destinations:
    - type: jsonl
      properties: {name: slow, delayMs: 10000}
      timeout: 300ms
      retry: {maxAttempts: 2, backoff: 50ms}
    deadLetter: {type: log}
"#;
    let (dir, path) = write_config(config);
    let plugins = plugins_file(dir.path());
    let running = Running::start(&["--plugins", plugins.to_str().unwrap(), "-f", path.to_str().unwrap()]);
    let started = Instant::now();
    assert_eq!(post(&format!("{}/in", running.webhook_url()), &[JSON], "{}").0, 202);
    let stdout = running.stdout.wait_for("\"dead-letter\"", WAIT);
    assert!(started.elapsed() < Duration::from_secs(8), "the attempts were cut short, not waited out");
    let letter: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(letter["object"]["attempts"], 2);
    assert!(letter["object"]["reason"].as_str().unwrap().contains("timed out after 300ms"), "{letter}");
    assert_eq!(running.stop(), Some(0));
}

#[test]
fn a_plugin_that_never_hands_shakes_hits_the_handshake_timeout_naming_plugin_and_trigger() {
    let (dir, config) = write_config(&counter_service("{}", "{type: log}"));
    let plugins = plugins_file_with(dir.path(), "mute", "[sleep, '30']");
    let started = Instant::now();
    let args = ["--plugins", plugins.to_str().unwrap(), "--plugin-handshake-timeout", "1s", "-f"];
    let (ok, text) = validate(&[&args[..], &[config.to_str().unwrap()]].concat());
    assert!(!ok);
    assert!(started.elapsed() < Duration::from_secs(10), "{text}");
    assert!(text.contains("error: plugin \"mute\": bad handshake: no handshake line on stdout within 1s"), "{text}");
    assert!(text.contains("trigger numbers: spec.triggers[0].source.type: unknown source type \"counter\""), "{text}");
    assert!(text.contains("(types may be missing: plugin \"mute\": bad handshake"), "{text}");
}

#[test]
fn a_bad_handshake_is_quoted_naming_plugin_and_trigger() {
    let (dir, config) = write_config(&counter_service("{}", "{type: log}"));
    let plugins = plugins_file_with(dir.path(), "chatty", "[sh, -c, 'echo hello from a program']");
    let (ok, text) = validate(&["--plugins", plugins.to_str().unwrap(), "-f", config.to_str().unwrap()]);
    assert!(!ok);
    let expected = "plugin \"chatty\": bad handshake: expected KTRIGGER_PLUGIN|1|<host:port> as the first line of \
                    stdout, got \"hello from a program\"";
    assert!(text.contains(&format!("error: {expected}")), "{text}");
    assert!(text.contains("trigger numbers: spec.triggers[0].source.type"), "{text}");
    assert!(text.contains(&format!("(types may be missing: {expected})")), "{text}");
}

#[test]
fn a_wrong_protocol_version_is_named_with_plugin_and_trigger() {
    let (dir, config) = write_config(&counter_service("{}", "{type: log}"));
    let plugins =
        plugins_file_with(dir.path(), "future", "[sh, -c, 'echo \"KTRIGGER_PLUGIN|2|127.0.0.1:9\"; sleep 5']");
    let (ok, text) = validate(&["--plugins", plugins.to_str().unwrap(), "-f", config.to_str().unwrap()]);
    assert!(!ok);
    let expected = "plugin \"future\" speaks protocol version 2; this ktrigger speaks version 1";
    assert!(text.contains(&format!("error: {expected}")), "{text}");
    assert!(text.contains("trigger numbers: spec.triggers[0].source.type"), "{text}");
    assert!(text.contains(&format!("(types may be missing: {expected})")), "{text}");
}

#[test]
fn properties_failing_the_plugin_schema_are_errors_naming_plugin_trigger_and_property() {
    let (dir, config) = write_config(&counter_service("{intervalMs: fast}", "{type: jsonl, properties: {nmae: x}}"));
    let plugins = plugins_file(dir.path());
    let (ok, text) = validate(&["--plugins", plugins.to_str().unwrap(), "-f", config.to_str().unwrap()]);
    assert!(!ok, "{text}");
    assert!(text.contains("trigger numbers: "), "{text}");
    assert!(
        text.contains("spec.triggers[0].source.properties.intervalMs: \"fast\" is not of type \"integer\""),
        "{text}"
    );
    assert!(text.contains("(schema of type \"counter\" from plugin \"example\")"), "{text}");
    assert!(text.contains("spec.triggers[0].destinations[0].properties: "), "{text}");
    assert!(text.contains("properties: Additional properties are not allowed ('nmae' was unexpected)"), "{text}");
    assert!(text.contains("properties: \"name\" is a required property"), "{text}");
    assert!(text.contains("(schema of type \"jsonl\" from plugin \"example\")"), "{text}");
}

#[test]
fn the_plugin_validate_call_checks_what_the_schema_cannot() {
    let (dir, config) = write_config(&counter_service("{intervalMs: 7200000}", "{type: log}"));
    let plugins = plugins_file(dir.path());
    let (ok, text) = validate(&["--plugins", plugins.to_str().unwrap(), "-f", config.to_str().unwrap()]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("spec.triggers[0].source.properties.intervalMs: at most one hour (3600000) (plugin \"example\")"),
        "{text}"
    );
    let (dir, config) = write_config(&counter_service("{intervalMs: 500}", "{type: log}"));
    let plugins = plugins_file(dir.path());
    let (ok, text) = validate(&["--plugins", plugins.to_str().unwrap(), "-f", config.to_str().unwrap()]);
    assert!(ok, "{text}");
}

#[test]
fn plugin_types_are_listed_beside_builtin_ones_and_builtin_kube_sources_can_be_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugins_file(dir.path());
    let output = ktrigger().args(["sources", "--plugins", plugins.to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("counter\n  Counts up: one event {n: 1, 2, ...} every intervalMs (plugin example)"),
        "{text}"
    );
    assert!(text.contains("k8s-events\n") && text.contains("resource-watcher\n") && text.contains("cron\n"), "{text}");
    let output = ktrigger().args(["destinations", "--plugins", plugins.to_str().unwrap()]).output().unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("jsonl\n"));

    let mut file = std::fs::read_to_string(&plugins).unwrap();
    file.push_str("disabledSources: [k8s-events, resource-watcher]\n");
    std::fs::write(&plugins, file).unwrap();
    let output = ktrigger().args(["sources", "--plugins", plugins.to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(!text.contains("k8s-events\n") && !text.contains("resource-watcher\n"), "{text}");
    assert!(text.contains("counter\n") && text.contains("cron\n"), "{text}");
    let events = "apiVersion: ktrigger.dev/v1alpha1\nkind: TriggerService\nmetadata: {name: ev}\nspec:\n  triggers:\n  \
                  - name: restarts\n    source: {type: k8s-events}\n    destinations: [{type: log}]\n";
    let config = dir.path().join("events.yaml");
    std::fs::write(&config, events).unwrap();
    let (ok, text) = validate(&["--plugins", plugins.to_str().unwrap(), "-f", config.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        text.contains("trigger restarts: spec.triggers[0].source.type: unknown source type \"k8s-events\""),
        "{text}"
    );
    assert!(text.contains("(types may be missing: source type \"k8s-events\" is in disabledSources"), "{text}");
}

/// The example plugin run on its own, as a sidecar would be; killed when dropped.
struct Sidecar {
    child: Child,
    address: String,
}

impl Sidecar {
    fn start(dir: &Path) -> Sidecar {
        let mut child = Command::new("python3")
            .arg(plugin_script())
            .args(["--listen", "127.0.0.1:0"])
            .env("EXAMPLE_PLUGIN_OUTPUT_DIR", dir)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let address = line.trim().rsplit('|').next().unwrap().to_string();
        Sidecar { child, address: format!("http://{address}") }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_controller_uses_a_plugin_at_an_address() {
    let env = Env::new("plugins");
    env.install_trigger_service_crd();
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(dir.path());
    let plugins = dir.path().join("plugins.yaml");
    std::fs::write(&plugins, format!("plugins:\n- name: sidecar\n  address: {}\n", sidecar.address)).unwrap();
    let running = env.start_controller(&["--plugins", plugins.to_str().unwrap()], &[]);
    let service = r#"
apiVersion: ktrigger.dev/v1alpha1
kind: TriggerService
metadata: {name: plugged}
spec:
  triggers:
  - name: numbers
    source: {type: counter, properties: {intervalMs: 50, count: 3}}
    destinations: [{type: jsonl, properties: {name: from-controller}}]
  - name: unknown
    source: {type: counter, properties: {intervalMs: -1}}
    destinations: [{type: log}]
"#;
    env.apply(&env.namespace, service);
    let lines = wait_for_lines(&dir.path().join("from-controller.jsonl"), 3, WAIT);
    let numbers: Vec<&Value> = lines.iter().map(|l| &l["context"]["object"]["n"]).collect();
    assert_eq!(numbers, [1, 2, 3]);
    assert_eq!(lines[0]["trigger"], "numbers");
    let status = env.wait_trigger("plugged", "numbers", "three events fired", |s| s["fired"] == 3);
    assert_eq!(status["ready"], true, "{status}");
    let status = env.wait_trigger("plugged", "unknown", "the schema error", |s| s["ready"] == false);
    let error = status["lastError"].as_str().unwrap();
    assert!(error.contains("properties.intervalMs: -1 is less than the minimum of 1"), "{error}");
    assert!(error.contains("plugin \"sidecar\""), "{error}");

    drop(sidecar);
    let status = env.wait_trigger("plugged", "numbers", "not ready while the plugin is down", |s| s["ready"] == false);
    assert!(status["lastError"].as_str().unwrap_or_default().contains("plugin \"sidecar\""), "{status}");
    assert_eq!(running.stop(), Some(0));
}

#[test]
fn khook_event_mappings_give_plugin_events_a_severity_and_tags_for_filters_and_templates() {
    let config = r#"
apiVersion: ktrigger.dev/v1alpha1
kind: TriggerService
metadata: {name: mapped}
spec:
  triggers:
  - name: critical
    source: {type: counter, properties: {intervalMs: 20, count: 2}}
    filter: event.severity == "critical" && event.tags.team == "apps"
    destinations:
    - type: log
      properties: {message: "{{ event.severity }} for {{ event.tags.team }}"}
"#;
    let (dir, path) = write_config(config);
    let mappings = dir.path().join("mappings.yaml");
    std::fs::write(
        &mappings,
        r#"
mappings:
- eventSource: counter
  eventType: tick
  internalType: Tick
  description: every count of the example plugin
  severity: critical
  tags: {team: apps}
  enabled: true
- name: evicted
  condition: object.reason == "Evicted"
"#,
    )
    .unwrap();
    let plugins = plugins_file(dir.path());
    let args = ["--plugins", plugins.to_str().unwrap(), "--event-mappings", mappings.to_str().unwrap()];
    let running = Running::start(&[&args[..], &["-f", path.to_str().unwrap()]].concat());
    let stdout = running.stdout.wait_until("two mapped events", WAIT, |t| logged_numbers(t).len() >= 2);
    let first: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    // Without the mapping, the filter's `event.severity` would be an error: nothing would pass.
    assert_eq!(first["message"], "critical for apps", "{first}");
    assert_eq!(running.stop(), Some(0));
}

#[test]
fn the_plugin_example_validates_with_its_plugins_file() {
    // Kept beside docs/plugins.md, out of examples/: they need the plugin to validate.
    let files = repo().join("docs/plugins");
    let plugins = files.join("plugins.yaml");
    let config = files.join("counter-to-jsonl.yaml");
    plugin_script();
    let output = ktrigger()
        .current_dir(repo())
        .args(["validate", "--plugins", plugins.to_str().unwrap(), "-f", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("ok: 1 TriggerService(s), 1 trigger(s), no problems"), "{stdout}");
}
